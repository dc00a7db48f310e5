"""PPO-Lagrangian aligned on text-carried requests only (``ppo.algorithm: ppo_lag_text``).

The setting of ShiftDC's safety perception distortion (Zou et al. 2025, :mod:`saferlhfv.interpret.shiftdc`):
a VLM whose safety alignment saw harmful requests as *text*, then meets the same content carried by a
*picture*. Here every RL train prompt is replaced by its text-carried version
(:func:`~saferlhfv.data.world.text_carried.text_carried_prompts`: the picture's caption + the question,
with the neutral stand-in picture); the oracle context, RM-V, CM-V and everything else are those of
:class:`~saferlhfv.train.ppo.trainer.PPOLag`. RM-V and CM-V score the caption-form prompt and its answer.
"""

from __future__ import annotations

from pathlib import Path

from saferlhfv.config import Config
from saferlhfv.data.world.text_carried import text_carried_prompts
from saferlhfv.train.ppo.trainer import OracleScores, PPOLag, register_algorithm

__all__ = ["OracleTextAlignedPPOLag", "TextAlignedPPOLag"]


@register_algorithm("ppo_lag_text")
class TextAlignedPPOLag(PPOLag):
    """PPO-Lagrangian whose rollouts are the text-carried versions of the train prompts (caption + question)."""

    def __init__(self, cfg: Config, *, sft_dir: Path, reward_dir: Path, cost_dir: Path, out_dir: str | Path):
        super().__init__(cfg, sft_dir=sft_dir, reward_dir=reward_dir, cost_dir=cost_dir, out_dir=out_dir)
        self.prompts = text_carried_prompts(self.prompts, cfg.data.image_size)


@register_algorithm("oracle_ppo_lag_text")
class OracleTextAlignedPPOLag(TextAlignedPPOLag, OracleScores):
    """Diagnostic, mini world only: :class:`TextAlignedPPOLag` with the oracle's ratings in place of RM-V and CM-V.

    CM-V learned harm from picture-carried requests; on the caption form of an image-coupled harmful
    request it rates compliance nearly as safe as a benign answer, so ``ppo_lag_text`` gets little pressure
    to refuse it. With the oracle's ratings (``C = -harmless``, so ``ppo.threshold`` is on the oracle's
    -3..3 scale) the policy is aligned on the text-carried requests as the paper's text-aligned backbone is.
    """
