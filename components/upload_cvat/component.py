"""KFP component `upload-cvat`: pre-annotations to CVAT or the folder backend
(logic: components.upload_cvat)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def upload_cvat(
    config_json: str,
    predictions: Input[Dataset],
    tasks: Output[Dataset],
    metrics: Output[Metrics],
):
    """Create annotation tasks with the images and their predicted masks; writes tasks.json."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.upload_cvat.stage import run_upload_cvat

    result = run_upload_cvat(
        config_from_json(config_json), predictions=predictions.path, out=tasks.path
    )
    log_metrics(metrics, result)
