# syntax=docker/dockerfile:1.7
# segloop CPU image: every stage except infer and train (see cuda.Dockerfile).
# Build from the repository root:  docker buildx build -f images/cpu.Dockerfile -t IMAGE .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: a virtual environment with segloop and its pinned dependencies
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Every version comes from requirements.lock (the lock the tests ran with), used as constraints
# so that only the runtime closure is installed (no test tools, no CUDA libraries).
COPY requirements.lock /tmp/requirements.lock
# CPU-only PyTorch wheels (a fraction of the size of the CUDA ones); their dependencies come
# from PyPI at the locked versions. "+cpu" satisfies the lock's torch==2.14.1.
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock \
        --extra-index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1+cpu torchvision==0.29.1+cpu
COPY pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock .

# ---- runtime: the venv only, run as a non-root user
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="segloop" \
      org.opencontainers.image.description="segloop pipeline components (CPU)" \
      org.opencontainers.image.source="https://github.com/segloop/segloop" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 segloop \
    && useradd --uid 10001 --gid segloop --create-home --shell /usr/sbin/nologin segloop
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/segloop \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /home/segloop
USER 10001:10001
# KFP replaces the command with its lightweight-component launcher; this is for `docker run`.
CMD ["segloop", "--help"]
