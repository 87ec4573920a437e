"""``python -m pyjlfa``: the ``pyjlfa`` command (see :mod:`pyjlfa.cli`)."""

import sys

from .cli import main

sys.exit(main())
