"""``moa-graph models``: the embedded models, and installing them in one command.

Examples::

    moa-graph models list                      # every embedded model: size, installed, origin
    moa-graph models pull local-tiny           # the models of a preset (here SmolLM2-135M)
    moa-graph models pull qwen2.5-coder-1.5b   # one model by name
    moa-graph models pull hf:ORG/REPO/FILE.gguf   # any GGUF file on the Hugging Face hub
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from moa_graph.local.errors import LocalModelError
from moa_graph.local.hub import PREFIX as HUB_PREFIX
from moa_graph.local.hub import HubFile
from moa_graph.local.pull import missing_parts, pull_hub_file, pull_model
from moa_graph.local.weights import MODELS, LocalModelSpec, get_model_spec
from moa_graph.presets import PRESETS, get_preset

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_models_parser(commands: Any) -> None:
    """``models list`` and ``models pull`` under ``commands`` (the ``moa-graph`` subparsers)."""
    models = commands.add_parser("models", help="list or install the embedded models")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every embedded model, installed or not")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    pull = actions.add_parser(
        "pull", help="install models: a name, a preset's models, or hf:ORG/REPO/FILE.gguf"
    )
    pull.add_argument("targets", nargs="+", metavar="NAME|PRESET|hf:ORG/REPO/FILE.gguf")


def command_models(args: argparse.Namespace) -> int:
    """Run ``models list`` or ``models pull``; returns the exit code."""
    if args.action == "list":
        return list_models(as_json=args.json)
    return pull_targets(args.targets)


def model_record(spec: LocalModelSpec) -> dict[str, Any]:
    """What ``models list`` shows of one model.

    Example:
        >>> record = model_record(MODELS["smollm2-135m"])
        >>> record["license"], record["status"], record["presets"]
        ('Apache-2.0', 'installed', ['local', 'local-tiny'])
    """
    missing, parts = len(missing_parts(spec)), len(spec.parts)
    status = ("installed" if not missing else "not installed" if missing == parts
              else f"partly installed ({parts - missing} of {parts} packages)")  # fmt: skip
    return {
        "name": spec.name,
        "size_bytes": spec.size,
        "status": status,
        "upstream": spec.upstream,
        "license": spec.license,
        "source": spec.source,
        "same_as": spec.same_as,
        "sha256": spec.sha256,
        "presets": [name for name in PRESETS if spec.name in get_preset(name).local_models()],
        "install": spec.pull_command,
    }


def models_table() -> str:
    """Every embedded model as a Markdown table (the docs' table; a test keeps them equal).

    Example:
        >>> models_table().splitlines()[2].startswith("| `local:smollm2-135m` |")
        True
    """
    rows = ["| name | upstream model (license) | size | bytes from | SHA-256 of the file |",
            "|---|---|---|---|---|"]  # fmt: skip
    for spec in MODELS.values():
        upstream = f"[{spec.upstream}](https://huggingface.co/{spec.upstream}) ({spec.license})"
        rows.append(f"| `local:{spec.name}` | {upstream} | {spec.size / 1e6:,.0f} MB | "
                    f"{spec.source} | `{spec.sha256}` |")  # fmt: skip
    return "\n".join(rows)


def list_models(*, as_json: bool = False) -> int:
    records = [model_record(spec) for spec in MODELS.values()]
    if as_json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    for record in records:
        print(f"{record['name']}  {record['size_bytes'] / 1e6:,.0f} MB  {record['status']}")
        print(f"  model:   {record['upstream']} ({record['license']})")
        print(f"  bytes:   {record['source']}")
        if record["same_as"]:
            print(f"           the same file as hf:{record['same_as']}")
        print(f"  sha256:  {record['sha256']}")
        print(f"  presets: {', '.join(record['presets']) or '-'}")
        if record["status"] != "installed":
            print(f"  install: {record['install']}")
        print()
    print("Any GGUF file on the Hugging Face hub runs too: moa-graph models pull "
          "hf:ORG/REPO/FILE.gguf, then use it as local:hf:ORG/REPO/FILE.gguf")  # fmt: skip
    return EXIT_OK


def pull_targets(targets: list[str]) -> int:
    """Install every model the targets name (checked first: a bad name installs nothing)."""
    try:
        names = [name for target in targets for name in expand(target)]
    except ValueError as exc:
        print(f"moa-graph models pull: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for name in dict.fromkeys(names):
        try:
            pulled = pull_hub_file(name) if name.startswith(HUB_PREFIX) else pull_model(name)
        except (LocalModelError, ImportError) as exc:
            print(f"moa-graph models pull: error: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, ImportError) else EXIT_FAILED
        hub = name.startswith(HUB_PREFIX)
        said = ("already installed" if pulled.was_there else "downloaded" if hub
                else "installed and checked")  # fmt: skip
        print(f"{pulled.name}: {said} ({pulled.path})", file=sys.stderr)
    return EXIT_OK


def expand(target: str) -> list[str]:
    """The models a target names: a preset's embedded models, one model, or a hub file.

    Example:
        >>> expand("local-vote"), expand("SmolLM2")
        (['qwen2.5-coder-1.5b'], ['smollm2-135m'])
    """
    if target in PRESETS:
        names = get_preset(target).local_models()
        if not names:
            raise ValueError(f"preset {target!r} uses no embedded model (its models are hosted)")
        return names
    if target.startswith(HUB_PREFIX):
        return [HubFile.parse(target).name]
    try:
        return [get_model_spec(target).name]
    except ValueError:
        local = [name for name in PRESETS if get_preset(name).local_models()]
        raise ValueError(
            f"{target!r} is neither an embedded model ({', '.join(MODELS)}), a preset using them "
            f"({', '.join(local)}) nor hf:ORG/REPO/FILE.gguf"
        ) from None
