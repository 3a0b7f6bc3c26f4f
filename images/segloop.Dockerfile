# syntax=docker/dockerfile:1.7
# segloop component image, one recipe for both variants (`make images` builds both):
#   VARIANT=cpu   every stage; torch from TORCH_INDEX_URL (PyTorch's CPU wheels: no CUDA libraries)
#   VARIANT=cuda  the infer and train stages on NVIDIA GPUs; torch from PyPI, whose wheels carry
#                 the CUDA libraries (nvidia-* wheels), so no pytorch/pytorch base is needed.
# Build from the repository root, e.g.
#   podman build -f images/segloop.Dockerfile --build-arg VARIANT=cuda -t IMAGE .
# The Python base is a build argument: an official python:3.11 image, or the Debian-packaged one
# `make base-image` makes where no registry is reachable (it ships python3, hence python3 below).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with segloop and its pinned dependencies
FROM ${PYTHON_IMAGE} AS build
# Empty TORCH_INDEX_URL: torch from PyPI (CUDA wheels). WHEELS_INDEX_URL: e.g. a local wheel
# index mounted read-only into the build (podman build --volume DIR:DIR:ro), empty by default.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Every version comes from requirements.lock (the lock the tests ran with), used as constraints
# so that only the runtime closure is installed (no test tools). The dependencies go in a layer
# of their own, before the source, so that a source change rebuilds seconds, not gigabytes.
# A site whose proxy has its own CA passes it as the build secret `ca` (read-only at build time,
# never in the image).
COPY requirements.lock pyproject.toml ./
RUN --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ -n "$WHEELS_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$WHEELS_INDEX_URL"; fi \
    && pip install --constraint requirements.lock "$(grep '^pip==' requirements.lock)" \
    && torch="torch==$(sed -n 's/^torch==//p' requirements.lock)" \
    && vision="torchvision==$(sed -n 's/^torchvision==//p' requirements.lock)" \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --constraint requirements.lock --extra-index-url "$TORCH_INDEX_URL" \
           "$torch+cpu" "$vision+cpu"; \
       else \
         pip install --constraint requirements.lock "$torch" "$vision"; \
       fi \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > runtime.txt \
    && pip install --constraint requirements.lock -r runtime.txt
COPY README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install --constraint requirements.lock --no-deps . \
    && pip check

# ---- runtime: the venv only, run as a non-root user
FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 segloop \
    && useradd --uid 10001 --gid segloop --create-home --shell /usr/sbin/nologin segloop
COPY --from=build /opt/venv /opt/venv
# Labels and the variant last: both variants share every layer above when torch is the same.
ARG VARIANT=cpu
ARG VERSION=unknown
LABEL org.opencontainers.image.title="segloop" \
      org.opencontainers.image.description="segloop pipeline components (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/segloop/segloop" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.segloop.variant="${VARIANT}"
# NVIDIA_*: read by the NVIDIA container toolkit only (ignored without a GPU).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/segloop \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/segloop
USER 10001:10001
# KFP replaces the command with its lightweight-component launcher; this is for `docker run`.
CMD ["segloop", "--help"]
