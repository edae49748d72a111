"""`python -m enet_cli` is the `enet` command."""

from enet_cli.cli import main

if __name__ == "__main__":
    main()
