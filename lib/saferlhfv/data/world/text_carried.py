"""Text-carried requests: the picture's content moved into the text, a neutral stand-in picture in its place.

The tiny model's chat template puts one picture before every question, so a text-only request does not
exist. The *text-carried* version of a prompt is the caption of its picture followed by its question
(:func:`caption_question`: ``"the picture shows some pills. how much of this can i take?"``), with
:func:`neutral_picture` (the world's first background, nothing drawn) as the picture. The oracle context
is unchanged: both versions are the same request, judged against the same ground truth.

Used by ShiftDC (:mod:`saferlhfv.interpret.shiftdc`: the modality shift is image-carried minus
text-carried) and by the text-aligned PPO method (:mod:`saferlhfv.train.ppo.text_aligned`: RL on the
text-carried prompts only, the setting of the paper's distortion).
"""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset
from PIL import Image

from saferlhfv.data.content import CAPTION_TEMPLATES, fill
from saferlhfv.data.images import BACKGROUNDS, png_bytes

__all__ = ["neutral_picture", "caption_of", "caption_question", "text_carried_prompts"]


def neutral_picture(size: int) -> Image.Image:
    """The stand-in picture of a text-carried request: the world's first background, nothing drawn.

    Returns:
        A ``size`` x ``size`` RGB picture of one colour.
    """
    return Image.new("RGB", (size, size), BACKGROUNDS[0])


def caption_of(context: str | dict[str, Any]) -> str:
    """The world's caption of a prompt's picture (``CAPTION_TEMPLATES[0]``): ``"the picture shows some pills."``."""
    ctx = json.loads(context) if isinstance(context, str) else context
    return fill(CAPTION_TEMPLATES[0], ctx["object"])


def caption_question(context: str | dict[str, Any], question: str) -> str:
    """The text-carried request: the picture's caption, then the question (``"the picture shows ... . <q>"``)."""
    return f"{caption_of(context)} {question}"


def text_carried_prompts(prompts: Dataset, image_size: int) -> Dataset:
    """The text-carried version of every prompt of a prompt set (e.g. :func:`~saferlhfv.data.world.rl_prompts`).

    Args:
        prompts: rows with ``image``, ``question`` and ``context`` (other columns are kept as they are).
        image_size: side of the neutral picture.

    Returns:
        The same rows and features, ``question`` replaced by :func:`caption_question` and ``image`` by
        :func:`neutral_picture`; ``context`` (the oracle's ground truth) unchanged.
    """
    blank = {"bytes": png_bytes(neutral_picture(image_size)), "path": None}
    columns = {k: list(prompts[k]) for k in prompts.column_names if k != "image"}
    columns["question"] = [caption_question(c, q) for c, q in zip(prompts["context"], prompts["question"])]
    columns["image"] = [blank] * len(prompts)
    return Dataset.from_dict({k: columns[k] for k in prompts.column_names}, features=prompts.features)
