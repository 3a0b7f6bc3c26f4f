"""The compile-time credential check: a table of settings it must refuse and settings it must
let through. A secret is found by its name and its shape together (components/core/redact.py
holds the one definition `redact` masks by): the refusal is one line naming the setting's
path, never its value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.core.errors import SegloopError
from components.core.redact import is_secret_key, redact
from pipelines.compile import check_no_credentials, find_credentials
from pipelines.config import load_config

SECRET = "hunter2Zq9"  # what no refusal may show

# (override, the setting path the refusal names)
REFUSED = [
    (f"mlflow.tracking_uri=https://mlflow.example.com/?api_key={SECRET}", "mlflow.tracking_uri"),
    (f"mlflow.tracking_uri=https://mlflow.example.com/x?apikey={SECRET}", "mlflow.tracking_uri"),
    (f"cvat.host=https://cvat.example.com/?auth={SECRET}", "cvat.host"),
    (f"cvat.host=https://cvat.example.com/?token={SECRET}", "cvat.host"),
    (  # an Azure SAS URL: the signature is the secret
        f"io.out_root=https://acct.blob.core.windows.net/c?sv=2022-11-02&sp=rw&sig={SECRET}",
        "io.out_root",
    ),
    (f"kfp.env.MYSQL_PWD={SECRET}", "kfp.env.MYSQL_PWD"),
    (f"kfp.env.DB_PASS={SECRET}", "kfp.env.DB_PASS"),
    (f"kfp.env.API_KEY={SECRET}", "kfp.env.API_KEY"),
    (f"kfp.env.CVAT_PASSWORD={SECRET}", "kfp.env.CVAT_PASSWORD"),
    (f"kfp.env.mlflowToken={SECRET}", "kfp.env.mlflowToken"),
    (f"infer.predictor_params={{api_key: {SECRET}}}", "infer.predictor_params.api_key"),
    (f"infer.predictor_params={{passwd: {SECRET}}}", "infer.predictor_params.passwd"),
    (f"infer.predictor_params={{private_key: {SECRET}}}", "infer.predictor_params.private_key"),
    ("infer.predictor_params={password: 987654321}", "infer.predictor_params.password"),
    ("infer.predictor_params={password: [hunter, 2]}", "infer.predictor_params.password"),
    (
        "infer.predictor_params={auth: {password: 987654321}}",
        "infer.predictor_params.auth.password",
    ),
    (  # a URL with userinfo inside a longer string
        f"kfp.env.EXTRA_ARGS='--db postgresql://bot:{SECRET}@db.example.com/x --verbose'",
        "kfp.env.EXTRA_ARGS",
    ),
    (f"kfp.env.PGOPTS='host=db user=bot password={SECRET}'", "kfp.env.PGOPTS"),
    (f"db.url=postgresql://bot:{SECRET}@db.example.com/images", "db.url"),
    (f"kfp.env.HEADERS='Authorization: Bearer {SECRET}'", "kfp.env.HEADERS"),
    (f"kfp.pod_labels.api_token={SECRET}", "kfp.pod_labels.api_token"),
]

ALLOWED = [
    "kfp.env.GOOGLE_APPLICATION_CREDENTIALS=/path",
    "kfp.env.GOOGLE_APPLICATION_CREDENTIALS=/var/run/secrets/google/key.json",
    "kfp.env.AWS_SHARED_CREDENTIALS_FILE=/var/run/secrets/aws/credentials",
    "kfp.env.PASSWORD_FILE=/run/secrets/db",
    "kfp.env.AUTHOR=jane",
    "kfp.env.BYPASS_PROXY=1",
    "kfp.env.AWS_REGION=eu-west-1",
    "infer.predictor_params={max_tokens: 512, tokenizer: bert, use_token: true, password: ''}",
    "mlflow.tracking_uri=https://mlflow.example.com:5000/x@y",  # a port and an @ in the path
    "mlflow.tracking_uri=https://mlflow.example.com/?experiment=weeds&author=jane",
    "cvat.host=https://cvat.example.com/tasks?page=2&sort=-id",
    "db.url=postgresql://segloop@db.example.com/images",
    "io.out_root=s3://bucket/runs/signature-study",
]


@pytest.mark.parametrize(("override", "path"), REFUSED, ids=[p for _, p in REFUSED])
def test_a_credential_is_refused_in_one_line_naming_its_setting(override, path):
    cfg = load_config(None, [override])
    with pytest.raises(SegloopError) as err:
        check_no_credentials(cfg)
    message = str(err.value)
    assert message.startswith(f"{path} holds a credential ("), message
    assert "\n" not in message
    assert SECRET not in message and "987654321" not in message


@pytest.mark.parametrize("override", ALLOWED)
def test_a_setting_that_is_no_credential_passes(override):
    check_no_credentials(load_config(None, [override]))


def test_run_parameters_are_checked_and_several_finds_are_named():
    cfg = load_config(None, [f"kfp.env.DB_PASS={SECRET}", f"kfp.env.API_KEY={SECRET}"])
    with pytest.raises(SegloopError) as err:
        check_no_credentials(cfg, {"model_uri": f"https://u:{SECRET}@host/model.pt"})
    message = str(err.value)
    assert message.startswith("kfp.env.DB_PASS holds a credential")
    assert "(also: kfp.env.API_KEY, parameter model_uri)" in message
    assert SECRET not in message


def test_what_the_check_refuses_redact_masks():
    """One definition: every string the check refuses by its shape, `redact` masks."""
    for override, _ in REFUSED:
        value = override.split("=", 1)[1].strip("'")
        if value.startswith("{"):
            continue  # a mapping: refused by its key's name
        if find_credentials({"x": value}):
            assert SECRET not in redact(value), value


@given(
    st.sampled_from(["password", "token", "api_key", "pwd", "pass", "sig", "secret", "auth"]),
    st.sampled_from(["", "DB_", "mysql-", "X."]),
    st.text(alphabet="abcdefXYZ0123456789!#%", min_size=6, max_size=20),
)
def test_any_literal_under_a_secret_name_is_refused(word, prefix, value):
    name = prefix + word
    assert is_secret_key(name) and is_secret_key(name.upper())
    assert find_credentials({"env": {name: value}}) == [
        (f"env.{name}", "a value under a name that says it is a secret")
    ]
