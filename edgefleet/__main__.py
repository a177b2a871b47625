"""``python -m edgefleet``: the ``edgefleet`` command without the installed script."""

import sys

from edgefleet.cli import main

sys.exit(main())
