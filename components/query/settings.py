"""Config section `query`: what to select, and the shape of the image table it comes from."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section

# SQL's BIGINT, the largest row count or offset a database takes as a parameter.
MAX_SQL_INT = 2**63 - 1


class QuerySettings(Section):
    filters: list[str] = Field(
        default_factory=list,
        description="ANDed: k=v, k=a,b, k!=v, k>=v, k<=v, k>v, k<v, 'k is null', 'k is not null', "
        "'k between a and b'; a column name with spaces or other signs in double quotes: "
        "'\"field name\"=v'",
    )
    sample: str | None = Field(
        None, description="random:n=N | seeded:n=N,seed=S | stratified:by=a|b,per_group=N[,seed=S]"
    )
    projection: list[str] | None = Field(
        None,
        description="columns to keep (default: all; the id and the image location are always kept)",
    )
    sort: str | None = Field(None, description="e.g. 'datetime:desc,image_id'")
    limit: int | None = Field(None, ge=1, le=MAX_SQL_INT, description="at most this many rows")
    offset: int = Field(0, ge=0, le=MAX_SQL_INT, description="skip this many rows first")
    out_format: Literal["jsonl", "csv", "parquet"] = Field(
        "jsonl", description="an extra format of the records, next to records.jsonl"
    )
    allow_empty: bool = Field(False, description="an empty result is not an error")
    preview: int = Field(0, ge=0, description="print the first N rows")
    # The table's shape: which columns play which role (any image table works).
    id_column: str | None = Field(
        None, description="the row id column (default: the table's primary key, or image_id)"
    )
    image_column: str | None = Field(
        None, description="the column holding each image's location (default: image_uri)"
    )
    image_root: str | None = Field(
        None,
        description="folder or s3:// prefix that relative image and mask paths hang from",
    )
    mask_column: str | None = Field(
        None, description="the column holding a mask location (default: mask_uri, if present)"
    )
    image_id_column: str | None = Field(
        None,
        description="cutout-level tables: the column that groups rows into images; records are "
        "then whole images, each once, with the cutouts that selected them",
    )


class QueryConfig(SharedConfig):
    """What the query stage reads: the shared sections and its own `query` section."""

    query: QuerySettings = QuerySettings()
