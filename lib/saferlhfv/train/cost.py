"""Train the cost model CM-V: ``python -m saferlhfv.train.cost --preset tiny``.

See :mod:`saferlhfv.train.preference` for the loss (pairwise + sign term) and the evaluation.
"""

import sys

from saferlhfv.train.preference import cli

if __name__ == "__main__":
    sys.exit(cli("cost"))
