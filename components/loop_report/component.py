"""KFP component `loop_report`: the active-learning loop report as a KFP `HTML` artifact
(logic: components.loop_report.stage)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def loop_report(
    config_json: str,
    dataset: Input[Dataset],
    summary: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
):
    """Rounds so far (registered versions, test IoU, aliases), this round's correction effort
    and sample pre-annotations next to the refined masks, as one HTML page in the KFP UI."""
    import os
    import shutil

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.loop_report.stage import run_loop_report

    result = run_loop_report(config_from_json(config_json), download=dataset.path, out=summary.path)
    os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
    shutil.copyfile(os.path.join(summary.path, "loop_report.html"), report.path)
    log_metrics(metrics, result)
