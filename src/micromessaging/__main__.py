"""``python -m micromessaging`` runs the command line."""

from .cli import main

main()
