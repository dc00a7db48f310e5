"""``python -m saferlhfv.bench``: the speed and memory table."""

import sys

from saferlhfv.bench.report import main

sys.exit(main())
