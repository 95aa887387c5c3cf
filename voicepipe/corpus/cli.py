"""`voicepipe corpus ...` commands (filled by the corpus stage)."""

import typer

app = typer.Typer(help="Build a single-speaker training corpus from a podcast feed.", no_args_is_help=True)
