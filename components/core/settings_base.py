"""Base class for config sections: strict (unknown keys are errors), validated on assignment."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Numbers given for text settings (`-o project.subname=2024`) stay text.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)
