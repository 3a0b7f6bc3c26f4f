"""Log set-up shared by the CLI and training's spawned ranks."""

from __future__ import annotations

import logging

# Libraries whose INFO lines are per request or per migration: noise in a stage's log.
CHATTY_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "alembic", "mlflow.store")


def quiet_chatty_libraries() -> None:
    """Only warnings and errors from `CHATTY_LIBRARIES`."""
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
