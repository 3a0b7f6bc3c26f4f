"""KFP component `query`: image records from the image DB (logic: components.query)."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.images import cpu_image


@dsl.component(base_image=cpu_image(), install_kfp_package=False)
def query(
    config_json: str,
    records: Output[Dataset],
    metrics: Output[Metrics],
    from_spec: str = "",
):
    """Select records by `query.*` (or replay a saved `query_spec.json` given in `from_spec`)."""
    from components.component_io import log_metrics
    from components.config import config_from_json
    from components.query.stage import run_query

    result = run_query(config_from_json(config_json), out=records.path, from_spec=from_spec or None)
    log_metrics(metrics, result)
