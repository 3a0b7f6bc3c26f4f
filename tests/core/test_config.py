"""Config: YAML and TOML files, overrides, errors that name key/value/allowed, masked cfg.yaml."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.core.config import (
    _merge_omegaconf,
    _merge_plain,
    mask_secrets,
    save_resolved,
    stage_run_dir,
)
from components.core.errors import ConfigError
from pipelines.config import load_config

YAML = """
project: {name: weeds, subname: round1}
io: {out_root: /data/runs}
query:
  filters: ["state=NC"]
  limit: 10
"""

TOML = """
[project]
name = "weeds"
subname = "round1"

[io]
out_root = "/data/runs"

[query]
filters = ["state=NC"]
limit = 10
"""


@pytest.mark.parametrize("suffix,text", [(".yaml", YAML), (".toml", TOML)])
def test_yaml_and_toml_load_the_same(tmp_path, suffix, text):
    path = tmp_path / f"cfg{suffix}"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.project.name == "weeds" and cfg.project.subname == "round1"
    assert cfg.query.filters == ["state=NC"] and cfg.query.limit == 10
    assert stage_run_dir(cfg, "query") == "/data/runs/weeds/round1/query"


def test_layers_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    cfg = load_config(
        path,
        ["query.limit=3", "db.url=sqlite:///x.db"],
        extra={"query": {"limit": 5, "sample": "seeded:n=2,seed=1"}},
    )
    assert cfg.query.limit == 3  # -o wins over CLI flags
    assert cfg.query.sample == "seeded:n=2,seed=1"  # flags win over the file
    assert cfg.query.filters == ["state=NC"]  # untouched keys keep the file's value
    assert cfg.db.url == "sqlite:///x.db"


def test_defaults_without_file():
    cfg = load_config()
    assert cfg.query.out_format == "jsonl" and cfg.db.table == "images"


def test_unknown_key_names_key_value_and_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["query.limt=5"])
    text = str(err.value)
    assert "unknown key 'query.limt'" in text and "(value 5)" in text
    assert "allowed here:" in text and "limit" in text and "filters" in text


def test_unknown_section_lists_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("quer: {limit: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "unknown key 'quer'" in str(err.value) and "query" in str(err.value)
    assert str(path) in str(err.value)


def test_wrong_type_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["query.limit=lots"])
    assert "'query.limit' = 'lots'" in str(err.value) and "integer" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(None, ["query.out_format=xlsx"])
    text = str(err.value)
    assert "'query.out_format' = 'xlsx'" in text
    assert "'jsonl'" in text and "'csv'" in text and "'parquet'" in text
    with pytest.raises(ConfigError, match="'query.limit' = 0"):
        load_config(None, ["query.limit=0"])


def test_malformed_override_and_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config(None, ["query.limit"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("query: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML/TOML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_cfg_yaml_masks_secrets(tmp_path):
    cfg = load_config(None, ["db.url=postgresql+psycopg://seg:hunter2@db.example:5432/images"])
    uri = save_resolved(cfg, tmp_path / "run")
    text = (tmp_path / "run" / "cfg.yaml").read_text()
    assert uri.endswith("cfg.yaml")
    assert "hunter2" not in text
    assert (
        yaml.safe_load(text)["db"]["url"] == "postgresql+psycopg://seg:***@db.example:5432/images"
    )


def test_mask_secrets_by_key_name_and_url():
    data = {
        "cvat": {"password": "p", "access_token": "t", "host": "https://cvat"},
        "list": [{"secret_key": "s"}, "https://u:pw@h/x"],
        "empty_password": "",
    }
    assert mask_secrets(data) == {
        "cvat": {"password": "***", "access_token": "***", "host": "https://cvat"},
        "list": [{"secret_key": "***"}, "https://u:***@h/x"],
        "empty_password": "",
    }


# ---------------------------------------------------------------- plain merge = OmegaConf's

# Override values: the plain reader must read each as OmegaConf does, or leave it to OmegaConf.
OVERRIDE_VALUES = [
    *["5", "+5", "-3", "0", "-0", "007", "0x10", "1_000", "1e3", "1.5", "-0.0", "00.5", "1."],
    *["yes", "No", "ON", "off", "true", "False", "TRUE", "y", "n", "t", "null", "NULL", "~", ""],
    *["nan", ".inf", "2024-01-01", "12:30", "a:b", "a:", "a::b", "s3://bucket/pre/fix"],
    *["/data/runs", "sqlite:///x.db", "postgresql+psycopg://u:pw@db.example:5432/images"],
    *["weeds-2024_v1.2", "a b", "a #b", "a#b", "'quoted'", '"q"', "[a, b]", "{a: 1}", "???"],
    *["${project.name}", "a${b}", "\\${x}", "x=y", "@at", "-dash", "é", "<<", "=", "a,b"],
]
COMMON_OVERRIDES = ["5", "true", "1.5", "/data/runs", "s3://b/p", "sqlite:///x.db", "weeds-2"]


@pytest.mark.parametrize("value", OVERRIDE_VALUES)
def test_plain_override_reads_as_omegaconf(value):
    overrides = [f"sec.key={value}"]
    plain = _merge_plain([{}], overrides)
    if plain is None:
        assert value not in COMMON_OVERRIDES  # the common ones never need OmegaConf
        return
    assert repr(plain) == repr(_merge_omegaconf([{}], overrides, None))  # types too


LAYERS = [
    # file, CLI flags, overrides: dicts merge key by key, lists and values are replaced
    (
        [
            {"project": {"name": "w"}, "query": {"filters": ["a=1"], "limit": 3, "sort": None}},
            {"query": {"filters": ["b=2", "c=3"], "sample": "seeded:n=1,seed=2"}},
        ],
        ["query.limit=7", "io.out_root=/x", "query.limit=8", "query.sort=id:desc"],
    ),
    ([{"a": {"b": [1, {"c": 2}], "d": 1.5, "e": True, "f": "x\\y $z {w} %"}}], ["a.g.h=1"]),
    ([{"a": {"b": [1]}}, {"a": {"b": [{"c": None}]}}], []),
    # OmegaConf's call: mapping vs value, interpolation, missing, unusual keys and values
    ([{"a": {"b": 1}}], ["a=5"]),
    ([{"a": None}, {"a": {"b": 1}}], []),
    ([{"a": [1]}, {"a": "x"}], []),
    ([{"a": "${b}", "b": 1}], []),
    ([{"a": "???"}], []),
    ([{1: "x"}], []),
    ([{}], ["a=1", "a.b=2"]),
    ([{}], ["a.b=1", "a=2"]),
    ([{}], ["a.0=1"]),
]


@pytest.mark.parametrize("layers,overrides", LAYERS)
def test_plain_merge_is_omegaconfs_or_defers_to_it(layers, overrides):
    given = copy.deepcopy(layers)
    plain = _merge_plain(layers, overrides)
    assert layers == given  # inputs are not changed
    if plain is not None:
        assert repr(plain) == repr(_merge_omegaconf(layers, overrides, None))


def test_interpolation_in_a_file_still_resolves(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("project: {name: weeds, subname: '${project.name}-r1'}\n")
    cfg = load_config(path, ["query.limit=1e1"])
    assert cfg.project.subname == "weeds-r1" and cfg.query.limit == 10


def test_cfg_yaml_is_what_yaml_safe_dump_writes():
    cfg = load_config(
        None, ["query.filters=['state=NC', 'a between 1 and 2']", "project.subname=2024"]
    )
    data = mask_secrets(cfg.model_dump(mode="json"))
    assert cfg.to_yaml() == yaml.safe_dump(data, sort_keys=False)
    # libyaml folds a long quoted string at other spaces than PyYAML: the same data comes back.
    cfg = load_config(None, extra={"cvat": {"host": "https://\u00e9.example/" + "a " * 60}})
    data = mask_secrets(cfg.model_dump(mode="json"))
    assert yaml.safe_load(cfg.to_yaml()) == data
