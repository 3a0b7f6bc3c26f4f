#!/usr/bin/env bash
# The Python 3.11 base for images/*.Dockerfile made from Debian bookworm packages (no container
# registry needed): mmdebstrap writes a minimal root file system, the engine imports it.
# Usage: images/base-image.sh IMAGE_TAG [ENGINE]   (ENGINE: podman (default) or docker)
set -euo pipefail
tag=${1:?usage: images/base-image.sh IMAGE_TAG [podman|docker]}
engine=${2:-podman}
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap not found; apt-get install mmdebstrap"; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# passwd: useradd for the images' non-root user. The apt lists are dropped: the images install
# nothing with apt, and they are 40 MB.
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  bookworm "$tmp/base.tar"
"$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$tmp/base.tar" "$tag" >/dev/null
echo "built $tag"
