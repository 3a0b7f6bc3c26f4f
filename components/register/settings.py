"""Config section `register`."""

from pydantic import Field

from components.core.settings_base import Section


class RegisterSettings(Section):
    min_improvement: float = Field(
        0.005, ge=0, description="mean IoU gain over the champion needed to take its place"
    )
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
