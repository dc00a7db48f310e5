"""``python -m saferlhfv.train.monitor [--preset P] [--set K=V] ...``: the ``monitor`` stage's command line.

The same as ``python -m saferlhfv.run monitor`` (same flags; the SFT precursor comes from the
artifact cache, trained first when missing). A command line sits above the stage table, so this
entry point belongs to the top layer (``tests/test_layers.py``), not to ``train``.
"""

import sys

from saferlhfv.run import main

sys.exit(main(["monitor", *sys.argv[1:]]))
