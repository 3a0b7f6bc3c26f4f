"""Config section `loop_report`."""

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class LoopReportSettings(Section):
    samples: int = Field(
        3,
        ge=0,
        le=50,
        description="images shown next to their pre-annotation: the ones people changed most",
    )


class LoopReportConfig(SharedConfig):
    """What the loop report reads: the shared sections and its own `loop_report` section."""

    loop_report: LoopReportSettings = LoopReportSettings()
