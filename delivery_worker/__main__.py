"""`python -m delivery_worker` is the same as the `delivery-worker` command."""

import sys

from delivery_worker.cli import main

sys.exit(main())
