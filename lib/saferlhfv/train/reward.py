"""Train the reward model RM-V: ``python -m saferlhfv.train.reward --preset tiny``.

See :mod:`saferlhfv.train.preference` for the loss and the evaluation.
"""

import sys

from saferlhfv.train.preference import cli

if __name__ == "__main__":
    sys.exit(cli("reward"))
