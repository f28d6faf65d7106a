"""``python -m m2msec``: the ``m2msec`` command."""

import sys

from m2msec.cli.main import main

sys.exit(main())
