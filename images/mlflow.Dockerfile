# syntax=docker/dockerfile:1.7
# MLflow tracking server for manifests/base/mlflow.yaml: PostgreSQL driver and boto3 (for
# artifacts in the object store) included, non-root. Same MLflow version as segloop's tests.
# The Python base is a build argument (see segloop.Dockerfile; `make base-image` for sites
# without a registry, whose Debian Python is `python3`).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# mlflow and boto3 at the versions in requirements.lock (segloop's tests ran against them);
# the PostgreSQL driver and Flask-WTF (the `auth` extra: CSRF protection of the basic-auth app,
# manifests/components/mlflow-auth) are the server's alone, so they are pinned here.
# A proxy's CA comes as the build secret `ca` (never in the image).
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --no-cache-dir --constraint /tmp/requirements.lock \
        "mlflow[auth]" boto3 psycopg2-binary==2.9.13 Flask-WTF==1.3.0

FROM ${PYTHON_IMAGE}
ARG VERSION=unknown
LABEL org.opencontainers.image.title="segloop-mlflow" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="MLflow tracking server for segloop" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid mlflow --create-home --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/mlflow
WORKDIR /home/mlflow
USER 10001:10001
EXPOSE 5000
# Safe default: localhost only, since the server has no authentication of its own. The
# Kubernetes manifests (manifests/base/mlflow.yaml) bind all addresses behind a NetworkPolicy
# and can add `--app-name=basic-auth` (manifests/components/mlflow-auth); to serve from a
# plain container, pass `mlflow server --host 0.0.0.0 --app-name basic-auth ...` yourself.
CMD ["mlflow", "server", "--host", "127.0.0.1", "--port", "5000"]
