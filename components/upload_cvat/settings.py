"""Config section `upload_cvat` (the CVAT connection, `cvat`, is shared: components.core.config)."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section


class UploadCvatSettings(Section):
    project: str | None = Field(
        None,
        description="CVAT project id or name; unset: standalone tasks with the labels file's labels",
    )
    create_project: bool = Field(
        False, description="create the project (labels file labels) if missing"
    )
    task_name: str | None = Field(
        None,
        description="task name template; placeholders {cvat_project} (the CVAT project's name) "
        "{project} {subname} (project.name, project.subname) {date} (UTC, YYYY-MM-DD; a "
        "retry on a later day finds the task of the earlier day with the same frames) {part} "
        "{parts}; unset: {cvat_project}-{date}-part{part} in a CVAT project, "
        "{project}-{subname}-{date}-part{part} for standalone tasks",
    )
    max_images_per_task: int = Field(500, ge=1)
    segment_size: int = Field(100, ge=0, description="frames per job; 0: one job per task")
    shape: Literal["mask", "polygon"] = Field("mask", description="how pre-annotations are drawn")
    create_missing_labels: bool = Field(
        False, description="add labels the masks use but CVAT lacks (else: an error)"
    )
    max_shapes_per_request: int = Field(
        500, ge=1, description="annotation upload chunk (halved on 413)"
    )
    max_request_mb: float = Field(
        100, gt=0, description="image upload request size (halved on 413)"
    )
    if_exists: Literal["skip", "new", "fail"] = Field(
        "skip",
        description="a task of the same name exists: skip (complete it if unfinished), new, or fail",
    )
    image_quality: int = Field(95, ge=1, le=100, description="CVAT's compressed-chunk quality")
    workers: int = Field(4, ge=1, description="parallel image fetches and mask encodings")
    max_failures: int = Field(
        0,
        ge=0,
        description="images that may fail (each recorded in the manifest) before the stage fails",
    )


class UploadCvatConfig(SharedConfig):
    """What the upload-cvat stage reads: the shared sections (`cvat` too) and `upload_cvat`."""

    upload_cvat: UploadCvatSettings = UploadCvatSettings()
