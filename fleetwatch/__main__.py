"""``python -m fleetwatch`` is the same as the ``fleetwatch`` console script."""

from __future__ import annotations

import sys

from fleetwatch.cli import main

sys.exit(main())
