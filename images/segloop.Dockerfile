# syntax=docker/dockerfile:1.7
# segloop component image, one recipe for both variants (`make images` builds both), the build
# target names the variant:
#   --target cpu   every stage; torch from TORCH_INDEX_URL (PyTorch's CPU wheels: no CUDA libraries)
#   --target cuda  the infer and train stages on NVIDIA GPUs, with TORCH_INDEX_URL empty: torch from
#                  PyPI, whose wheels carry the CUDA libraries (nvidia-* wheels), so no
#                  pytorch/pytorch base is needed.
# Build from the repository root, e.g.
#   podman build -f images/segloop.Dockerfile --target cuda --build-arg TORCH_INDEX_URL= -t IMAGE .
# The Python base is a build argument: an official python:3.11 image, or the Debian-packaged one
# `make base-image` makes where no registry is reachable (it ships python3, hence python3 below).
#
# One stage: the venv is installed where it runs. A build stage would add nothing to leave
# behind (pip needs no compiler here: every dependency is a wheel) and copying its venv costs
# minutes and the venv's size again on disk (gigabytes with the CUDA wheels).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE} AS venv
RUN groupadd --gid 10001 segloop \
    && useradd --uid 10001 --gid segloop --create-home --shell /usr/sbin/nologin segloop
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Every version comes from requirements.lock (the lock the tests ran with), used as constraints
# so that only the runtime closure is installed (no test tools). The dependencies are a layer
# of their own, before the source, so that a source change rebuilds seconds, not gigabytes.
# Empty TORCH_INDEX_URL: torch from PyPI (CUDA wheels). WHEELS_INDEX_URL: e.g. a local wheel
# index mounted read-only into the build (podman build --volume DIR:DIR:ro), empty by default.
# A site whose proxy has its own CA passes it as the build secret `ca` (read-only at build
# time, never in the image).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_INDEX_URL=
WORKDIR /tmp/segloop
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
RUN pip install --no-deps --no-build-isolation . \
    && pip check \
    && rm -rf /tmp/segloop
ARG VERSION=unknown
LABEL org.opencontainers.image.title="segloop" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/segloop/segloop" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    HOME=/home/segloop \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/segloop
USER 10001:10001
# KFP replaces the command with its lightweight-component launcher; this is for `docker run`.
CMD ["segloop", "--help"]

# ---- the variants: labels and settings only, so both share every layer above when their torch
# comes from the same index (the CPU image falls back to PyPI where the CPU index is unreachable).
FROM venv AS cuda
# Read by the NVIDIA container toolkit.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.description="segloop pipeline components (CUDA: infer, train)" \
      io.segloop.variant="cuda"

FROM venv AS cpu
LABEL org.opencontainers.image.description="segloop pipeline components (CPU)" \
      io.segloop.variant="cpu"
