"""The container tests of `make images-test` (tests/images/run.sh builds the images, serves the
engine's Docker API and sets SEGLOOP_IMAGES_TEST=1). `make test` does not collect them: they
need the built images and take minutes."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("SEGLOOP_IMAGES_TEST") else ["test_*.py"]
