"""KFP component `download-cvat`: refined masks from CVAT or the folder backend
(logic: components.download_cvat)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def download_cvat(
    config_json: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
):
    """Download the tasks selected by `download_cvat.*` as images/, masks/, labels.json."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.download_cvat.stage import run_download_cvat

    result = run_download_cvat(config_from_json(config_json), out=dataset.path)
    log_metrics(metrics, result)
