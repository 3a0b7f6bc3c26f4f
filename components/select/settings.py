"""Config section `select`."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class SelectSettings(Section):
    strategy: Literal["uncertainty", "random", "stratified", "diverse", "mixed"] = Field(
        "uncertainty",
        description="uncertainty: most uncertain first; diverse: most uncertain without near-duplicates; "
        "mixed: most uncertain plus a seeded random share of the rest; "
        "stratified: round-robin over groups; random: seeded random",
    )
    budget: int = Field(20, ge=1, description="how many images to pick")
    metric: Literal["entropy", "margin", "uncertain_share"] = "entropy"
    stratify_by: str = Field(
        "dominant_class",
        description="'dominant_class' (predicted) or a column of the query records",
    )
    seed: int = 0
    random_share: float = Field(
        0.5, ge=0, le=1, description="mixed: share of the budget picked at random from the rest"
    )
    min_hash_distance: int = Field(
        6, ge=0, le=64, description="diverse: perceptual-hash bits two picked images must differ by"
    )


class SelectConfig(SharedConfig):
    """What the select stage reads: the shared sections and its own `select` section."""

    select: SelectSettings = SelectSettings()
