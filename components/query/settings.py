"""Config section `query`."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class QuerySettings(Section):
    filters: list[str] = Field(
        default_factory=list, description="ANDed, e.g. 'state=NC', 'width>=1000'"
    )
    sample: str | None = Field(
        None, description="random:n=N | seeded:n=N,seed=S | stratified:by=a|b,per_group=N[,seed=S]"
    )
    projection: list[str] | None = Field(
        None, description="columns to keep (default: all; the id column is always kept)"
    )
    sort: str | None = Field(None, description="e.g. 'datetime:desc,image_id'")
    limit: int | None = Field(None, ge=1)
    offset: int = Field(0, ge=0)
    out_format: Literal["jsonl", "csv", "parquet"] = "jsonl"
    allow_empty: bool = False
    id_column: str | None = Field(
        None, description="the record id column (default: the table's primary key, or image_id)"
    )
    preview: int = Field(0, ge=0, description="print the first N rows")


class QueryConfig(SharedConfig):
    """What the query stage reads: the shared sections and its own `query` section."""

    query: QuerySettings = QuerySettings()
