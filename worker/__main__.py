"""``python -m worker``: the same as ``bgjobs worker``."""

import sys

from worker.main import main

sys.exit(main())
