"""Config section `download_cvat`."""

from typing import Literal

from pydantic import Field

from components.core.config import SharedConfig
from components.core.settings_base import Section

TaskStatus = Literal["annotation", "validation", "completed"]


class DownloadCvatSettings(Section):
    project: str | None = Field(None, description="take the tasks of this project (id or name)")
    task_ids: list[int] = Field(default_factory=list, description="take these tasks")
    name_pattern: str | None = Field(None, description="take tasks whose name matches this glob")
    upload_dir: str | None = Field(
        None,
        description="an upload-cvat output (tasks.json): its tasks when nothing else is given, "
        "its frame map, and its pre-annotations for the correction effort",
    )
    status: list[TaskStatus] | None = Field(
        None, description="required task status; default: completed (any when a job filter is set)"
    )
    job_stage: Literal["annotation", "validation", "acceptance"] | None = Field(
        None, description="every job must be in this stage"
    )
    job_state: Literal["new", "in progress", "rejected", "completed"] | None = Field(
        None, description="every job must be in this state"
    )
    format: Literal["Segmentation mask 1.1", "COCO 1.0"] = "Segmentation mask 1.1"
    include_images: bool = Field(True, description="put the images beside the masks")
    image_source: Literal["original", "export"] = Field(
        "original",
        description="original (default): each record's own image file, as the upload's frame map "
        "names it (byte for byte; CVAT re-encodes the images of an export), CVAT's copy only "
        "where the original is unreachable or changed; export: always CVAT's copy",
    )
    missing_mask: Literal["error", "empty"] = Field(
        "error",
        description="a frame without a mask (no mask file; no shapes in CVAT): error (default; "
        "the frame fails and is left out) or empty (all background, only in a completed task "
        "or job)",
    )
    resume: bool = Field(True, description="skip tasks whose updated_date did not change")
    overwrite: bool = Field(
        False,
        description="empty an earlier download in the output folder first (needed to rerun into "
        "it with other labels, format, image or mask settings)",
    )
    on_duplicate: Literal["newest", "error"] = Field(
        "newest",
        description="a record in several selected tasks: newest (take it from the task with the "
        "newest updated_date; on a tie, the higher task id) or error (stop; nothing is written)",
    )
    max_failures: int = Field(
        0,
        ge=0,
        description="images that may fail (each recorded in the manifest) before the stage fails",
    )


class DownloadCvatConfig(SharedConfig):
    """What the download_cvat stage reads: the shared sections and its own `download_cvat` section."""

    download_cvat: DownloadCvatSettings = DownloadCvatSettings()
