"""Mask helpers shared by the models layer (score read at the last real token, positions that skip
padding) and the algorithms layer (losses at the last real token): plain tensor functions with no
dependency on either.
"""

from __future__ import annotations

import torch

__all__ = ["last_real_index", "position_ids_from_mask"]


def last_real_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of the last real (mask == 1) token of each row, whatever the layout.

    Args:
        mask: ``[B, T]`` of 0/1; real tokens anywhere (right padding, left padding,
            prompt masked out).

    Returns:
        ``(index, nonempty)``: ``[B]`` long positions in ``0 .. T-1`` and a ``[B]``
        bool that is False for rows with no real token (their index is 0 and must
        not be used).
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    keep = mask.bool()
    T = keep.shape[1]
    # the first True of the reversed row is the last True of the row
    index = T - 1 - keep.flip(dims=[1]).int().argmax(dim=1)
    nonempty = keep.any(dim=1)
    return torch.where(nonempty, index, torch.zeros_like(index)), nonempty


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, 2, ... counted over real tokens only (pads get 0); shape ``[B, T]``."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
