"""Helper scripts for the tests (child processes)."""
