"""Config section `register`."""

import warnings

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class RegisterSettings(Section):
    min_improvement: float = Field(
        0.005, ge=0, description="mean IoU gain over the champion needed to take its place"
    )
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"


# The section `register` shadows ABCMeta.register on the class; instances read the field fine.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class RegisterConfig(SharedConfig):
    """What the register stage reads: the shared sections and its own `register` section."""

    register: RegisterSettings = RegisterSettings()
