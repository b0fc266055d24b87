"""``python -m volden`` is the ``volden`` command."""

from .cli import main

main()
