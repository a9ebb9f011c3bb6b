"""``python -m conveyor`` is the ``conveyor`` command."""

from .cli.app import main

main()
