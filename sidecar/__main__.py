"""`python -m sidecar ...` is `authz-sidecar ...`."""

import sys

from .cli import main

sys.exit(main())
