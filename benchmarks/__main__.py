"""``python -m benchmarks``: run every benchmark; see benchmarks/README.md."""

import sys

from benchmarks.run import main

sys.exit(main())
