"""``python -m bgjobs``: the same as the ``bgjobs`` command."""

import sys

from bgjobs.cli import main

sys.exit(main())
