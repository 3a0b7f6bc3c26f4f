"""Config section `select`."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class SelectSettings(Section):
    strategy: Literal[
        "uncertainty",
        "random",
        "stratified",
        "diverse",
        "mixed",
        "kcenter",
        "uncertain_kcenter",
        "badge",
    ] = Field(
        "uncertainty",
        description="uncertainty: most uncertain first; diverse: most uncertain without near-duplicates; "
        "kcenter: greedy core-set on the model's embeddings (from the most uncertain); "
        "uncertain_kcenter: k-center among the candidate_factor x budget most uncertain; "
        "badge: k-means++ seeding on uncertainty-scaled embeddings; "
        "mixed: most uncertain plus a seeded random share of the rest; "
        "stratified: round-robin over groups; random: seeded random",
    )
    budget: int = Field(20, ge=1, description="how many images to pick")
    metric: Literal["entropy", "margin", "uncertain_share"] = Field(
        "entropy", description="the per-image uncertainty that ranks images (from infer)"
    )
    stratify_by: str = Field(
        "dominant_class",
        description="'dominant_class' (predicted) or a column of the query records",
    )
    seed: int = Field(0, description="seed of the random picks")
    random_share: float = Field(
        0.5, ge=0, le=1, description="mixed: share of the budget picked at random from the rest"
    )
    candidate_factor: float = Field(
        3.0,
        ge=1.0,
        description="uncertain_kcenter: k-center among this many times the budget of the most "
        "uncertain images",
    )
    group_by: str | None = Field(
        None,
        description="kcenter, uncertain_kcenter: a column of the query records naming an "
        "image's session (e.g. batch_id): a session gets a second pick only once every "
        "session has one (needs --records)",
    )
    min_hash_distance: int = Field(
        6, ge=0, le=64, description="diverse: perceptual-hash bits two picked images must differ by"
    )


class SelectConfig(SharedConfig):
    """What the select stage reads: the shared sections and its own `select` section."""

    select: SelectSettings = SelectSettings()
