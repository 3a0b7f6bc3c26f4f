"""KFP component `register`: MLflow model version, challenger/champion aliases, and the
side-by-side comparison of the latest versions (logic: components.register)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def register(
    config_json: str,
    evaluation: Input[Dataset],
    registration: Output[Dataset],
    comparison: Output[Markdown],
    metrics: Output[Metrics],
):
    """Register the evaluated model (the MLflow model its evaluation names) as `challenger`;
    promote it to `champion` only if it beats the champion on the same test split."""
    import os
    import shutil

    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.register.compare import run_compare
    from components.register.stage import run_register

    cfg = config_from_json(config_json)
    result = run_register(cfg, evaluation=evaluation.path, out=registration.path)
    compare_dir = os.path.join(registration.path, "compare")
    run_compare(cfg, out=compare_dir)
    shutil.copyfile(os.path.join(compare_dir, "compare.md"), comparison.path)
    log_metrics(metrics, result)
