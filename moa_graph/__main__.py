"""``python -m moa_graph``: the ``moa-graph`` command, for an environment whose scripts are not
on ``PATH`` (``python -m moa_graph eval --help``)."""

from moa_graph.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
