# syntax=docker/dockerfile:1.7
# segloop CUDA image: the infer and train stages on NVIDIA GPUs.
# The base image brings PyTorch built for CUDA (with cuDNN); segloop goes in a venv that sees
# the base's site-packages, so torch is not installed twice.
# Build from the repository root:  docker buildx build -f images/cuda.Dockerfile -t IMAGE .
ARG PYTORCH_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# ---- build: a virtual environment with segloop and its pinned dependencies
FROM ${PYTORCH_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Every version comes from requirements.lock, used as constraints (runtime closure only).
COPY requirements.lock /tmp/requirements.lock
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# torch==2.14.1 is already satisfied by the base image; the lock keeps it that way.
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock . \
    && python -c "import torch, segmentation_models_pytorch; print(torch.__version__)"

# ---- runtime: the base plus the venv, run as a non-root user
FROM ${PYTORCH_IMAGE}
LABEL org.opencontainers.image.title="segloop-cuda" \
      org.opencontainers.image.description="segloop pipeline components (CUDA: infer, train)" \
      org.opencontainers.image.source="https://github.com/segloop/segloop" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 segloop \
    && useradd --uid 10001 --gid segloop --create-home --shell /usr/sbin/nologin segloop
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/segloop \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/segloop
USER 10001:10001
CMD ["segloop", "--help"]
