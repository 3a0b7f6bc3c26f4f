"""The run-time config every component receives as `config_json`.

`RunConfig` is composed here, above the stages: the shared sections (components.core.config)
plus each stage's own section, by inheriting every stage's `<Stage>Config`, so a `RunConfig`
is what each stage function takes. The compile-time `kfp` section is not part of it: it lives
with the pipelines (`pipelines.config.SegloopConfig`), which hand the components only this.
"""

from __future__ import annotations

from components.core import redact, shutdown
from components.core.config import parse_json_into
from components.download_cvat.settings import DownloadCvatConfig
from components.evaluate.settings import EvaluateConfig
from components.infer.settings import InferConfig
from components.loop_report.settings import LoopReportConfig
from components.preprocess.settings import PreprocessConfig
from components.query.settings import QueryConfig
from components.register.settings import RegisterConfig, RegisterSettings
from components.select.settings import SelectConfig
from components.train.settings import TrainConfig
from components.upload_cvat.settings import UploadCvatConfig


# Bases in reverse loop order: pydantic lists the fields of the last base first, so the
# sections come out as the loop runs (shared, query, infer, ..., register).
class RunConfig(
    LoopReportConfig,
    RegisterConfig,
    EvaluateConfig,
    TrainConfig,
    PreprocessConfig,
    DownloadCvatConfig,
    UploadCvatConfig,
    SelectConfig,
    InferConfig,
    QueryConfig,
):
    """Every section a run can change: the shared ones and each stage's."""

    # Re-declared on purpose: pydantic takes an inherited field's default from the class
    # attribute, and on a model class `register` is ABCMeta.register, not the section.
    register: RegisterSettings = RegisterSettings()


def config_from_json(text: str) -> RunConfig:
    """The config as a KFP component receives it: one JSON string parameter.

    Every component body starts here, so this also guards the task's process: its log lines
    and everything written to stdout or stderr (print, a library's own output: pod logs) are
    masked, and SIGTERM (a stopped pod) cleans up temporary folders.
    """
    redact.install()
    redact.guard_streams()
    shutdown.exit_cleanly_on_sigterm()
    return parse_json_into(RunConfig, text)
