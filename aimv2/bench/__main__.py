"""``python -m aimv2.bench``: the ``aimv2 bench`` command, and its worker processes."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
