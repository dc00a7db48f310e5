"""Launched by ``tests/test_ppo_lag.py`` under torchrun: the PPO CLI, with rank 1 raising in its
second iteration (a dying rank). Arguments are the CLI's (``ppo --preset tiny --out ... --set ...``)."""

import sys

from saferlhfv.run import main
from saferlhfv.train.ppo import trainer

_step = trainer.PPOTrainer.step


def _dies_on_rank_1(self):
    if self.accelerator.process_index == 1 and self.iteration == 1:
        raise RuntimeError("rank 1 dies on purpose in iteration 2")
    return _step(self)


trainer.PPOTrainer.step = _dies_on_rank_1
sys.exit(main(sys.argv[1:]))
