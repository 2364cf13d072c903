"""``python -m gradreg`` is the ``gradreg`` command."""
import sys

from .cli import main

sys.exit(main())
