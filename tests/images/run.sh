#!/usr/bin/env bash
# `make images-test`: build the component images and run the pipelines task by task in them on a
# real container engine (KFP's DockerRunner against the engine's Docker API), then the image
# checks (tests/images/test_images.py).
#
# ENGINE=podman (default): podman, runc and mmdebstrap come from Debian when missing (as root);
# the engine settings of images/containers-ci.conf are installed only when a probe container
# cannot start without them; `podman system service` serves the Docker API on a socket of
# this run and is stopped by its PID. Where no registry answers, the Python base is made from
# Debian packages (`make base-image`). ENGINE=docker: an engine already running is used as is.
# Without an engine that can be had (apt fails), it says so and exits 0 with a warning.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENGINE=${ENGINE:-podman}
work=$(mktemp -d /tmp/segloop-images-test.XXXXXX)
service_pid=
say() { echo "images-test: $*"; }
warn() { printf '\n*** images-test WARNING: %s ***\n\n' "$*" >&2; }
cleanup() {
  if [ -n "$service_pid" ]; then
    kill "$service_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$service_pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$service_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

install_podman() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    return 1
  fi
  say "installing ${missing[*]} from Debian (log: /tmp/segloop-images-apt.log)"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 600 apt-get update -q \
      && timeout 900 apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >/tmp/segloop-images-apt.log 2>&1
}

# A container that starts, or the engine settings this host needs (only then, never over a
# file of the user's).
probe() { timeout 120 podman run --rm --network host "$1" true >"$work/probe.log" 2>&1; }
engine_settings() {
  local image=$1 dropin=/etc/containers/containers.conf.d/50-segloop.conf
  probe "$image" && return 0
  if [ -e "$dropin" ] || [ "$(id -u)" != 0 ]; then
    say "error: podman cannot start a container: $(tail -1 "$work/probe.log")"; return 1
  fi
  say "podman cannot start a container with its defaults ($(tail -1 "$work/probe.log")); installing $dropin"
  mkdir -p "$(dirname "$dropin")"
  cp images/containers-ci.conf "$dropin"
  probe "$image" || { say "error: podman still cannot start a container: $(tail -1 "$work/probe.log")"; return 1; }
}

start_service() {
  local sock=$work/podman.sock
  podman system service --time=0 "unix://$sock" >"$work/service.log" 2>&1 &
  service_pid=$!
  export DOCKER_HOST=unix://$sock
  for _ in $(seq 150); do
    curl -fsS --max-time 2 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && return 0
    kill -0 "$service_pid" 2>/dev/null || break
    sleep 0.2
  done
  say "error: podman system service did not answer on $sock within 30 s: $(tail -3 "$work/service.log")"
  return 1
}

make_args=(ENGINE="$ENGINE")
if [ "$ENGINE" = podman ]; then
  if ! install_podman; then
    warn "no container engine can be had here (podman, runc, mmdebstrap missing and apt-get failed or not root: /tmp/segloop-images-apt.log); the image tests are SKIPPED"
    exit 0
  fi
  base=${PYTHON_IMAGE:-localhost/segloop-python:3.11-bookworm}
  if ! podman image exists "$base"; then
    start=$SECONDS
    if [ -z "${PYTHON_IMAGE:-}" ]; then
      make --no-print-directory base-image ENGINE=podman BASE_IMAGE="$base"
    else
      timeout 600 podman pull "$base"
    fi
    say "base image $base in $((SECONDS - start)) s"
  fi
  make_args+=(PYTHON_IMAGE="$base")
  engine_settings "$base"
  start_service
fi

# One tag for the build and the tests (the default is per build: version + hash of the code).
tag=${TAG:-$(.venv/bin/python -m components.images tag)}
make_args+=(TAG="$tag")
export SEGLOOP_IMAGES_TAG=$tag
# pip in the build trusts what pip here trusts (a proxy's CA), read-only, never in the image.
ca=${CA_BUNDLE:-${PIP_CERT:-}}
[ -n "$ca" ] && [ -f "$ca" ] && make_args+=(CA_BUNDLE="$ca")
[ -n "${WHEELS_DIR:-}" ] && make_args+=(WHEELS_DIR="$WHEELS_DIR")
# The engine's temporary layer copies (gigabytes each) go under this run's folder, removed at
# exit even when a build is interrupted.
mkdir -p "$work/tmp"
start=$SECONDS
TMPDIR=$work/tmp timeout 2400 make --no-print-directory images "${make_args[@]}"
say "images built in $((SECONDS - start)) s"
if [ "$ENGINE" = podman ]; then
  podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'segloop|mlflow' || true
fi

start=$SECONDS
SEGLOOP_IMAGES_TEST=1 timeout 1800 .venv/bin/pytest -q -p no:cacheprovider tests/images
say "pipelines and image checks in $((SECONDS - start)) s"
