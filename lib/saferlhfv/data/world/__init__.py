"""BeaverTails-V-mini: a procedural world in the BeaverTails-V schema, with everything later stages need.

One seeded generator makes, from a :class:`~saferlhfv.config.DataConfig`, in four modules
(:mod:`~saferlhfv.data.world.grammar`, :mod:`~saferlhfv.data.world.datasets`,
:mod:`~saferlhfv.data.world.statistics`, :mod:`~saferlhfv.data.world.hub`):

* :func:`preference_pairs` -- image + question + two responses with dual preferences and graded
  rates, in the hub's paired schema (plus a ``context`` column for the oracle);
* :func:`rl_prompts` -- prompt-only sets for PPO (train / evaluation, disjoint);
* :func:`sft_dataset` -- the precursor SFT mixture (often complies with harmful requests; a
  captioning share teaches grounding);
* :func:`guard_dataset` -- input / output moderation labels (unsafe, category, severity);
* :func:`text_corpus` -- every string the world can produce (for the tiny model's tokenizer);
* :func:`dataset_statistics` -- sizes, category counts, the helpful-vs-safer tension, coupling.

How a record is made: pick a category, then a request *context* -- a coupled question with a
harmful picture (30 %), the same kind of question with a benign picture (45 %), or the
category's text-only harmful question with any of its pictures (25 %) -- draw the picture
(:mod:`saferlhfv.data.images`), write responses from the phrase grammar
(:func:`render_response`) and rate them with the oracle (:mod:`saferlhfv.data.oracle`).
Every record draws from its own ``random.Random`` seeded by (seed, what, split, category,
index), so results never depend on global state or on the order of calls.

Command line (writes the paired data in the hub layout, one folder per category)::

    python -m saferlhfv.data.world --preset tiny --out data/beavertails_v_mini
"""

from saferlhfv.data.world.datasets import (
    caption_dataset,
    guard_dataset,
    guard_row,
    perturbed_pairs,
    preference_dataset,
    preference_pairs,
    rl_prompts,
    sft_dataset,
    text_corpus,
)
from saferlhfv.data.world.grammar import (
    BEHAVIOUR_TYPES,
    PERTURBATIONS,
    SPLITS,
    WRITERS,
    make_context,
    perturb_response,
    render_image,
    render_response,
    sample_context,
    split_name,
)
from saferlhfv.data.world.hub import main, write_hub_layout
from saferlhfv.data.world.statistics import coupling_rate, dataset_statistics

__all__ = [
    "BEHAVIOUR_TYPES",
    "WRITERS",
    "SPLITS",
    "sample_context",
    "make_context",
    "render_image",
    "render_response",
    "preference_pairs",
    "preference_dataset",
    "rl_prompts",
    "sft_dataset",
    "guard_dataset",
    "guard_row",
    "text_corpus",
    "coupling_rate",
    "dataset_statistics",
    "write_hub_layout",
    "main",
    "PERTURBATIONS",
    "perturb_response",
    "perturbed_pairs",
    "caption_dataset",
    "split_name",
]
