"""GGUF files from the Hugging Face hub as embedded models: ``local:hf:ORG/REPO/FILE.gguf``.

``moa-graph models pull hf:ORG/REPO/FILE.gguf`` downloads the file into the hub's own cache
(``huggingface_hub``, which honours ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE``); a model
named ``local:hf:ORG/REPO/FILE.gguf`` is then read from that cache, without any network call.

Example:
    >>> HubFile.parse("hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/q4_k_m/model.gguf")
    HubFile(repo_id='Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF', filename='q4_k_m/model.gguf')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa_graph.extras import require
from moa_graph.local.errors import ModelNotInstalledError

PREFIX = "hf:"
"""What starts a hub file's name."""


@dataclass(frozen=True)
class HubFile:
    """One file of a model repository on the Hugging Face hub."""

    repo_id: str
    filename: str

    @classmethod
    def parse(cls, text: str) -> HubFile:
        """``hf:ORG/REPO/FILE.gguf`` (the file may sit in folders of the repository).

        Raises:
            ValueError: naming the expected form.
        """
        body = text.removeprefix("local:").removeprefix(PREFIX)
        org, _, rest = body.partition("/")
        repo, _, filename = rest.partition("/")
        if not (text.startswith((PREFIX, "local:" + PREFIX)) and org and repo and filename):
            raise ValueError(f"{text!r}: a hub file is named hf:ORG/REPO/FILE.gguf")
        if not filename.endswith(".gguf"):
            raise ValueError(f"{text!r}: only GGUF files (.gguf) run as embedded models")
        return cls(f"{org}/{repo}", filename)

    @property
    def name(self) -> str:
        """``hf:ORG/REPO/FILE.gguf``."""
        return f"{PREFIX}{self.repo_id}/{self.filename}"

    def cached(self) -> Path:
        """The file in the hub's cache (no network call).

        Raises:
            ModelNotInstalledError: it was never downloaded; names the command that does it.
        """
        hub = _hub(self.name)
        path = hub.try_to_load_from_cache(self.repo_id, self.filename)
        if not isinstance(path, str):
            raise ModelNotInstalledError(
                f"local model {self.name!r} is not downloaded; download it with: "
                f"moa-graph models pull {self.name}"
            )
        return Path(path)

    def download(self) -> Path:
        """Download the file into the hub's cache (a no-op when it is there), with the hub's
        progress bar; returns its path."""
        return Path(_hub(self.name).hf_hub_download(self.repo_id, self.filename))


def _hub(name: str) -> Any:
    require("local", f"the hub model {name}")
    import huggingface_hub

    return huggingface_hub
