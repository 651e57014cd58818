"""``python -m moot`` runs the CLI."""

from moot.cli import main

main()
