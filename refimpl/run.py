"""`python -m refimpl.run`: the command line (the commands live in refimpl/cli.py)."""

from .cli import main

if __name__ == "__main__":
    main()
