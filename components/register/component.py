"""KFP component `register`: MLflow model version, challenger/champion aliases
(logic: components.register)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from pipelines.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def register(
    config_json: str,
    model: Input[Model],
    evaluation: Input[Dataset],
    registration: Output[Dataset],
    comparison: Output[Markdown],
    metrics: Output[Metrics],
):
    """Register `model` as `challenger`; promote to `champion` only if it beats the champion."""
    from components.core.config import config_from_json
    from components.register.register import run_register
    from pipelines.component_io import log_metrics

    result = run_register(
        config_from_json(config_json),
        model=model.path,
        evaluation=evaluation.path,
        out=registration.path,
        comparison_md=comparison.path,
    )
    log_metrics(metrics, result)
