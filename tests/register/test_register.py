"""Registry: versions, aliases champion/challenger, the promotion rule, and `segloop compare`."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from model_helpers import evaluation_variant, registry_cfg  # tests/ is on sys.path

from components.core.errors import SegloopError
from components.register.compare import run_compare
from components.register.stage import KEY_TAG, decide, register_key, run_register, version_tags
from pipelines.cli import cli


def test_promotion_rule_and_compare(evaluated, mlflow_env):
    cfg, overrides, name, tmp = evaluated
    client = MlflowClient(mlflow_env)
    e1 = json.loads((tmp / "e1" / "metrics.json").read_text())

    first = run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    assert first["promoted"] and first["reason"] == "no champion yet"
    mv = client.get_model_version(name, "1")
    assert mv.tags["segloop.split_hash"] == e1["split_hash"]
    assert mv.tags["segloop.data_hash"] == e1["data_hash"]
    assert abs(float(mv.tags["segloop.mean_iou"]) - e1["mean_iou"]) < 1e-6
    assert "segloop.iou.weed" in mv.tags
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    better = evaluation_variant(tmp / "e1", tmp / "e2", mean_iou=e1["mean_iou"] + 0.05)
    second = run_register(cfg, evaluation=str(better), out=str(tmp / "r2"))
    assert second["promoted"] and second["version"] == 2 and "beats champion" in second["reason"]

    worse = evaluation_variant(tmp / "e1", tmp / "e3", mean_iou=e1["mean_iou"] + 0.055)
    third = run_register(cfg, evaluation=str(worse), out=str(tmp / "r3"))
    assert not third["promoted"] and "below min_improvement 0.01" in third["reason"]

    other = evaluation_variant(tmp / "e1", tmp / "e4", mean_iou=0.999, split_hash="f" * 64)
    fourth = run_register(cfg, evaluation=str(other), out=str(tmp / "r4"))
    assert not fourth["promoted"] and "different test split" in fourth["reason"]

    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert client.get_model_version_by_alias(name, "challenger").version == "4"
    assert json.loads((tmp / "r4" / "register.json").read_text())["previous_champion"] == 2
    assert "different test split" in client.get_model_version(name, "4").tags["segloop.promotion"]

    # compare: the CLI prints the table and writes Markdown, CSV and HTML.
    args = ["compare", "--model", name, "--versions", "1", "2", "3", "4", "--out", str(tmp / "cmp")]
    args += [a for o in overrides for a in ("-o", o)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| version |" in result.output and "different test splits" in result.output
    rows = list(csv.DictReader(io.StringIO((tmp / "cmp" / "compare.csv").read_text())))
    assert [r["version"] for r in rows] == ["1", "2", "3", "4"]
    assert abs(float(rows[1]["delta_mean_iou"]) - 0.05) < 1e-5
    assert "iou_weed" in rows[0] and rows[1]["aliases"] == "champion"
    assert "<table>" in (tmp / "cmp" / "compare.html").read_text()
    assert "> warning:" in (tmp / "cmp" / "compare.md").read_text()
    # The delta says what it is measured against: the first version listed.
    page = (tmp / "cmp" / "compare.html").read_text()
    assert "delta_mean_iou (vs v1)</th>" in page and "deltas are against version 1" in page
    assert "| delta_mean_iou (vs v1) |" in result.output
    assert "delta_mean_iou: mean IoU minus that of version 1" in result.output

    by_alias = run_compare(cfg, out=str(tmp / "c2"), aliases=["champion", "challenger"])
    assert [r["version"] for r in by_alias["rows"]] == [2, 4] and by_alias["warnings"]
    assert "deltas are against version 2" in (tmp / "c2" / "compare.html").read_text()
    assert (
        abs(by_alias["rows"][1]["delta_mean_iou"] - (0.999 - by_alias["rows"][0]["mean_iou"]))
        < 1e-5
    )
    same_split = run_compare(cfg, out=str(tmp / "c3"), versions=[1, 2, 3])
    assert not same_split["warnings"]
    last_two = run_compare(cfg, out=str(tmp / "c4"), last=2)["rows"]
    assert [r["version"] for r in last_two] == [3, 4]
    # Versions found by search carry no aliases in MLflow 3.x: compare still shows them.
    assert [r["aliases"] for r in last_two] == ["", "challenger"]
    with pytest.raises(SegloopError, match="one of"):
        run_compare(cfg, out=str(tmp / "c5"), versions=[1], last=2)


def test_register_is_idempotent_under_retries(evaluated, mlflow_env, monkeypatch):
    """KFP retries register: a retry (after a failure half way, or after success) reuses the
    version of the same model and evaluation and replays its decision."""
    cfg, _, name, tmp = evaluated
    client = MlflowClient(mlflow_env)
    e1 = json.loads((tmp / "e1" / "metrics.json").read_text())

    # First attempt: the version is created, then the registry fails before the aliases.
    real_alias = MlflowClient.set_registered_model_alias

    def failing_alias(self, *args, **kwargs):
        raise MlflowException("registry connection reset")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", failing_alias)
    with pytest.raises(SegloopError, match="connection reset"):
        run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_alias)

    retry = run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    again = run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert retry == again
    assert retry["version"] == 1 and retry["promoted"] and retry["reason"] == "no champion yet"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    assert json.loads((tmp / "r1" / "register.json").read_text()) == again

    # A better evaluation of the same model is another version; its retry, with the champion
    # now on that very version, replays "promoted" instead of comparing it with itself.
    better = evaluation_variant(tmp / "e1", tmp / "e2", mean_iou=e1["mean_iou"] + 0.05)
    second = run_register(cfg, evaluation=str(better), out=str(tmp / "r2"))
    second_retry = run_register(cfg, evaluation=str(better), out=str(tmp / "r2"))
    assert second["version"] == 2 and second["promoted"] and second["previous_champion"] == 1
    assert second_retry == second
    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert "beats champion" in client.get_model_version(name, "2").tags["segloop.promotion"]


def test_register_keeps_one_version_when_a_retried_post_made_two(evaluated, mlflow_env):
    """MLflow's HTTP client retries a POST whose answer timed out, so one create-model-version
    can make two versions with the same register_key. They are made here directly on the real
    server, as the retried POST would; register's next step keeps one and deletes the other."""
    cfg, _, name, tmp = evaluated
    client = MlflowClient(mlflow_env)
    metrics = json.loads((tmp / "e1" / "metrics.json").read_text())
    tags = version_tags(metrics)
    source = metrics["model_uri"]  # models:/m-<id>: the logged model

    def create(model: str, extra_tags=None):  # what one POST of mlflow.register_model creates
        key = register_key(model, source, tags)
        all_tags = {**tags, KEY_TAG: key, **(extra_tags or {})}
        model_id = source.removeprefix("models:/")
        return client.create_model_version(model, source, tags=all_tags, model_id=model_id)

    client.create_registered_model(name)
    twice = [create(name) for _ in range(2)]
    assert [v.version for v in twice] == ["1", "2"]

    first = run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r1"))
    assert first["version"] == 1 and first["promoted"]
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    # The duplicate appears after the first attempt decided (its answer came back late): the
    # decided version is kept even when it is not the lowest; the aliases stay on it.
    other = f"{name}-b"
    cfg = registry_cfg(tmp, other)[0]
    client.create_registered_model(other)
    undecided = create(other)
    decided = create(other, {"segloop.promoted": "true", "segloop.promotion": "no champion yet"})
    client.set_registered_model_alias(other, "champion", decided.version)
    retry = run_register(cfg, evaluation=str(tmp / "e1"), out=str(tmp / "r2"))
    assert retry["version"] == int(decided.version) == 2 and retry["promoted"]
    assert [v.version for v in client.search_model_versions(f"name='{other}'")] == ["2"]
    assert client.get_model_version_by_alias(other, "champion").version == "2"
    assert client.get_model_version_by_alias(other, "challenger").version == "2"
    assert undecided.version == "1"


def test_decide_rule():
    new = {"segloop.split_hash": "a", "segloop.mean_iou": "0.700"}
    assert decide(new, None, 0.01) == (True, "no champion yet")
    assert decide(new, {"segloop.split_hash": "a", "segloop.mean_iou": "0.680"}, 0.01)[0]
    assert not decide(new, {"segloop.split_hash": "a", "segloop.mean_iou": "0.695"}, 0.01)[0]
    assert not decide(new, {"segloop.split_hash": "b", "segloop.mean_iou": "0.1"}, 0.01)[0]


def test_register_needs_an_mlflow_model(tmp_path, mlflow_env):
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text(
        json.dumps({"split_hash": "x", "mean_iou": 0.5, "mean_dice": 0.5, "model": "/some/ckpt"})
    )
    cfg, _ = registry_cfg(tmp_path, "never")
    with pytest.raises(SegloopError, match="logged in MLflow"):
        run_register(cfg, evaluation=str(tmp_path / "ev"), out=str(tmp_path / "r"))
