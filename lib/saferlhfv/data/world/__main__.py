"""``python -m saferlhfv.data.world``: write the mini world in the hub layout."""

import sys

from saferlhfv.data.world.hub import main

sys.exit(main())
