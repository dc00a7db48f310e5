"""BeaverTails-V data: schema and validation, the hub loader, and the BeaverTails-V-mini world.

* :func:`load_beavertails_v` -- the hub, a local copy or ``"mini"``, validated (:mod:`.beavertails`);
* :mod:`.schema` -- the paired schema, :class:`SchemaError`, :func:`validate_dataset`;
* :mod:`.world` -- BeaverTails-V-mini: preference pairs, RL prompts, SFT mixture, guard labels, corpus;
* :mod:`.oracle` -- the mini world's ground-truth judge: :func:`judge` (helpful 0..3, harmless -3..3).
"""

from saferlhfv.data.beavertails import (
    HUB_ID,
    BeaverTailsUnavailableError,
    load_beavertails_v,
    load_preference_data,
)
from saferlhfv.data.content import CATEGORIES
from saferlhfv.data.oracle import judge, judge_batch
from saferlhfv.data.schema import (
    PAIR_FIELDS,
    SchemaError,
    SingleResponseLayoutError,
    ValidationReport,
    validate_dataset,
)

__all__ = [
    "HUB_ID",
    "CATEGORIES",
    "PAIR_FIELDS",
    "BeaverTailsUnavailableError",
    "SchemaError",
    "SingleResponseLayoutError",
    "ValidationReport",
    "load_beavertails_v",
    "load_preference_data",
    "validate_dataset",
    "judge",
    "judge_batch",
]
