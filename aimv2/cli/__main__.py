"""``python -m aimv2.cli …`` (what ``torchrun -m aimv2.cli pretrain …`` runs): the
``aimv2`` command."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
