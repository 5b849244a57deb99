"""The `normlab` command line: the typer app (`app`), its terminal display (`display`) and
`normlab bench` (`bench`)."""

from normlab.cli.app import app, main

__all__ = ["app", "main"]
