"""``python -m m2msec``: the ``m2msec`` command (:func:`m2msec.cli.main.main`)."""

import sys

from m2msec.cli.main import main

sys.exit(main())
