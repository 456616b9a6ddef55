"""``python -m bigseg``: the same as the ``bigseg`` command."""
import sys

from bigseg.cli import main

sys.exit(main())
