"""The pipeline graphs: `pre_annotation`, `training` and `active_learning` (one full round).

Each graph is built from a resolved config: the config itself is the pipeline parameter
`config_json` (its default is the config the pipeline was compiled or run with), a few other
parameters mirror config keys users change per run, and every task gets its platform options
(image, resources, GPU placement, Secrets, caching, retries) from the config's `kfp` section.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature types at runtime.

from collections.abc import Callable

from kfp import dsl

from components.core.errors import SegloopError
from components.download_cvat.component import download_cvat
from components.evaluate.component import evaluate
from components.infer.component import infer, infer_merge, infer_shard
from components.infer.settings import REGISTERED_MODEL
from components.loop_report.component import loop_report
from components.preprocess.component import preprocess
from components.query.component import query
from components.register.component import register
from components.select.component import select
from components.train.component import train
from components.upload_cvat.component import upload_cvat
from pipelines import platform
from pipelines.config import SegloopConfig, run_config_json
from pipelines.settings import PIPELINE_NAMES

DESCRIPTIONS = {
    "pre_annotation": "query -> infer -> select -> upload-cvat",
    "training": "download-cvat -> preprocess -> train -> evaluate -> register",
    "active_learning": (
        "one round: training, the loop report, then pre-annotation with the new champion"
    ),
}


def kfp_name(cfg: SegloopConfig, pipeline: str) -> str:
    """The pipeline's name on the cluster: `<project>-<pipeline>` in KFP's allowed characters."""
    return f"{cfg.project.name}-{pipeline}".lower().replace("_", "-").replace(".", "-")


def _pre_annotation_tasks(
    cfg: SegloopConfig, config_json, model_uri, from_spec, after=None
) -> dsl.PipelineTask:
    q = platform.apply(query(config_json=config_json, from_spec=from_spec), "query", cfg)
    if after is not None:
        q.after(after)
    records = q.outputs["records"]
    shards = cfg.infer.shards  # compile time: the graph's shape
    if shards == 1:
        inf = platform.apply(
            infer(config_json=config_json, records=records, model_uri=model_uri), "infer", cfg
        )
    else:
        # One GPU task per contiguous block of records, then one CPU task that merges them
        # into the predictions artifact `infer` writes (select and upload read it unchanged).
        with dsl.ParallelFor(list(range(shards))) as shard:
            part = platform.apply(
                infer_shard(
                    config_json=config_json,
                    records=records,
                    model_uri=model_uri,
                    shard=shard,
                    shards=shards,
                ),
                "infer",
                cfg,
                display_name="infer-shard",
            )
        inf = platform.apply(
            infer_merge(
                config_json=config_json,
                records=records,
                shards=dsl.Collected(part.outputs["predictions"]),
            ),
            "infer",
            cfg,
            gpu=False,
            display_name="infer-merge",
        )
    sel = platform.apply(
        select(config_json=config_json, predictions=inf.outputs["predictions"], records=records),
        "select",
        cfg,
    )
    return platform.apply(
        upload_cvat(config_json=config_json, predictions=sel.outputs["selected"]),
        "upload_cvat",
        cfg,
    )


def _training_tasks(
    cfg: SegloopConfig, config_json, earlier_datasets
) -> tuple[dsl.PipelineTask, dsl.PipelineTask]:
    """The training stages; returns (download-cvat, register)."""
    down = platform.apply(download_cvat(config_json=config_json), "download_cvat", cfg)
    prep = platform.apply(
        preprocess(
            config_json=config_json,
            dataset=down.outputs["dataset"],
            earlier_datasets=earlier_datasets,
        ),
        "preprocess",
        cfg,
    )
    splits = prep.outputs["splits"]
    # One DDP process per GPU of the train pod (components.train.launch); 1 on CPU.
    nproc = platform.gpu_count(cfg, "train") or 1
    tr = platform.apply(train(config_json=config_json, splits=splits, nproc=nproc), "train", cfg)
    model = tr.outputs["model"]
    ev = platform.apply(
        evaluate(config_json=config_json, model=model, splits=splits), "evaluate", cfg
    )
    reg = platform.apply(
        register(config_json=config_json, evaluation=ev.outputs["evaluation"]),
        "register",
        cfg,
    )
    return down, reg


def build(name: str, cfg: SegloopConfig) -> Callable:
    """The `@dsl.pipeline` function for `name`, with the config's values as parameter defaults."""
    if name not in PIPELINE_NAMES:
        raise SegloopError(f"unknown pipeline {name!r}; choose one of: {', '.join(PIPELINE_NAMES)}")
    # No secrets in here: the config holds none (credentials come from env / Secrets).
    config_default = run_config_json(cfg)
    # What a run may change is resolved at run time from config_json inside the components, so
    # these defaults name no model and no dataset: an empty `model_uri` is the run's
    # `infer.model`, else its registered model at `infer.model_alias` (components.infer.stage.
    # pipeline_model); an empty `earlier_datasets` is the run's `preprocess.inputs`
    # (components.preprocess.stage.pipeline_inputs). A non-empty value given to a run wins.
    model_default = ""
    earlier_default: list = []
    decorate = dsl.pipeline(
        name=kfp_name(cfg, name),
        description=f"segloop {name}: {DESCRIPTIONS[name]}",
        pipeline_root=cfg.kfp.pipeline_root or None,
    )

    if name == "pre_annotation":

        def pre_annotation(
            config_json: str = config_default,
            model_uri: str = model_default,
            query_from_spec: str = "",
        ):
            _pre_annotation_tasks(cfg, config_json, model_uri, query_from_spec)

        return decorate(pre_annotation)

    if name == "training":

        def training(
            config_json: str = config_default,
            earlier_datasets: list = earlier_default,
        ):
            _training_tasks(cfg, config_json, earlier_datasets)

        return decorate(training)

    def active_learning(
        config_json: str = config_default,
        earlier_datasets: list = earlier_default,
        query_from_spec: str = "",
    ):
        downloaded, registered = _training_tasks(cfg, config_json, earlier_datasets)
        # The report reads the registry, so it waits for this round's version.
        platform.apply(
            loop_report(config_json=config_json, dataset=downloaded.outputs["dataset"]),
            "loop_report",
            cfg,
        ).after(registered)
        # The champion after this round's register (the new model if it won, else the old one):
        # the run's registered model at its `infer.model_alias`, named by config_json at run time.
        _pre_annotation_tasks(cfg, config_json, REGISTERED_MODEL, query_from_spec, after=registered)

    return decorate(active_learning)
