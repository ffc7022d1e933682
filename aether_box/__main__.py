"""`python -m aether_box` is the `aether-box` command."""

from aether_box.cli import main

main()
