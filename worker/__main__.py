"""``python -m bgjobs.worker``: the same as ``bgjobs worker``."""

import sys

from bgjobs.worker.main import main

sys.exit(main())
