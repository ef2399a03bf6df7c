"""`python -m blurlite ...`: the `blurlite` command."""
import sys

from .cli import main

sys.exit(main())
