"""Config sections `cvat` (the connection, shared by upload and download) and `upload_cvat`."""

from typing import Literal

from pydantic import Field, model_validator

from components.core.settings_base import Section


class CvatSettings(Section):
    """Where annotation happens. Credentials never live here: CVAT_USERNAME / CVAT_PASSWORD
    or CVAT_ACCESS_TOKEN come from the environment."""

    backend: Literal["cvat", "folder"] = Field(
        "cvat",
        description="cvat: a CVAT server; folder: a folder of task layouts edited in any tool",
    )
    folder: str | None = Field(None, description="folder backend: where the task folders live")
    host: str | None = Field(None, description="CVAT URL; default: $CVAT_HOST")
    organization: str | None = Field(None, description="organization slug; default: none")
    retries: int = Field(4, ge=0, description="retries on connection errors and 5xx answers")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry")
    request_timeout_s: float = Field(300, gt=0, description="read timeout of one request")
    status_check_period_s: float = Field(
        1.0, gt=0, description="polling period of background requests"
    )
    verify_ssl: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.backend == "folder" and not self.folder:
            raise ValueError(
                "cvat.backend=folder needs cvat.folder (a folder path or s3:// prefix)"
            )
        return self


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
        "{project} {subname} (project.name, project.subname) {date} (UTC, YYYY-MM-DD) {part} "
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
    max_failures: int = Field(0, ge=0)
