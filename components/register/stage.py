"""`run_register`: an evaluated model becomes an MLflow model version; champion/challenger.

The new version is tagged with the split hash, data hash and test metrics and gets the alias
`challenger`. It takes `champion` only when there is no champion yet, or when both were
evaluated on the same split (same hash) and its mean IoU beats the champion's by at least
`register.min_improvement`. Otherwise the champion stays and the decision says why.

Idempotent: KFP retries register, and a retry after a partial failure must not add a second
version. Each version carries `segloop.register_key` (a hash of the model source and the
evaluation's tags); a version with the same key is reused, and the decision recorded on it
(`segloop.promotion`, `segloop.promoted`, `segloop.previous_champion`) is replayed: the aliases
are set again, the rule is not re-applied against a champion that may be this very version.
MLflow's HTTP client retries a POST whose answer timed out, so one create can make two
versions with the key: the next step keeps one (the one with a decision, else the lowest),
puts the aliases on it and deletes the others.

Output: `register.json` (name, version, aliases, decision, reason), metrics.json, cfg.yaml.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from components.core import storage, tracking
from components.core.artifacts import write_metrics
from components.core.config import save_resolved
from components.core.errors import SegloopError
from components.core.tracking import TAG
from components.register.settings import RegisterConfig

log = logging.getLogger(__name__)


def version_tags(metrics: dict[str, Any]) -> dict[str, str]:
    tags = {
        f"{TAG}split_hash": str(metrics["split_hash"]),
        f"{TAG}data_hash": str(metrics.get("data_hash") or ""),
        f"{TAG}mean_iou": f"{metrics['mean_iou']:.6f}",
        f"{TAG}mean_dice": f"{metrics['mean_dice']:.6f}",
        f"{TAG}test_images": str(metrics.get("images", "")),
        f"{TAG}eval_run_id": str(metrics.get("run_id") or ""),
    }
    for name, value in metrics.get("iou", {}).items():
        if value is not None:
            tags[f"{TAG}iou.{name}"] = f"{value:.6f}"
    return tags


KEY_TAG = f"{TAG}register_key"


def register_key(name: str, source: str, tags: dict[str, str]) -> str:
    """Same registered model, same model source, same evaluation: the same version."""
    doc = json.dumps({"name": name, "source": source, "tags": tags}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def versions_with_key(client, name: str, key: str) -> list:
    """Every version of `name` registered with `key`, by number. More than one happens: MLflow's
    HTTP client retries a POST whose answer timed out, and the server made the version twice."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.`{KEY_TAG}` = '{key}'")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            return []
        raise
    return sorted(
        (mv for mv in found if mv.tags.get(KEY_TAG) == key), key=lambda mv: int(mv.version)
    )


def keep_one(versions: list):
    """The version to keep among those with one key: the lowest that carries a decision (an
    earlier attempt may have moved the aliases to it), else the lowest."""
    decided = [mv for mv in versions if mv.tags.get(f"{TAG}promoted") in ("true", "false")]
    return (decided or versions)[0] if versions else None


def find_version(client, name: str, key: str):
    """The version of `name` registered earlier with `key` (`keep_one`), or None."""
    return keep_one(versions_with_key(client, name, key))


def drop_duplicates(client, name: str, key: str, kept) -> list[int]:
    """Delete the other versions with `kept`'s key (after the aliases are on `kept`): one
    model and evaluation, one version. Returns the numbers deleted."""
    dropped = [
        int(mv.version) for mv in versions_with_key(client, name, key) if mv.version != kept.version
    ]
    for number in dropped:
        log.warning(
            "register: %s version %d duplicates version %s (same model and evaluation, made "
            "twice by a retried request): deleted",
            name,
            number,
            kept.version,
        )
        client.delete_model_version(name, str(number))
    return dropped


def decide(
    new: dict[str, str], champion: dict[str, str] | None, min_improvement: float
) -> tuple[bool, str]:
    """(promote?, reason) from the tags of the new version and of the current champion."""
    if champion is None:
        return True, "no champion yet"
    if champion.get(f"{TAG}split_hash") != new[f"{TAG}split_hash"]:
        return False, (
            f"evaluated on a different test split (champion {champion.get(f'{TAG}split_hash', '?')[:12]}, "
            f"new {new[f'{TAG}split_hash'][:12]}); re-evaluate the champion on this split "
            "(`segloop evaluate --model models:/<name>@champion`) before promoting"
        )
    old = float(champion.get(f"{TAG}mean_iou", "nan"))
    gain = float(new[f"{TAG}mean_iou"]) - old
    if gain >= min_improvement:
        return (
            True,
            f"mean IoU {float(new[f'{TAG}mean_iou']):.4f} beats champion {old:.4f} by {gain:+.4f}",
        )
    return False, (
        f"mean IoU {float(new[f'{TAG}mean_iou']):.4f} vs champion {old:.4f} ({gain:+.4f}) "
        f"is below min_improvement {min_improvement}"
    )


def _decision(client, name: str, mv, tags: dict[str, str], cfg: RegisterConfig):
    """(promote, reason, previous champion) for `mv`: replayed when an earlier attempt
    recorded it (and may have moved the champion to this version), else decided now and
    recorded before any alias moves (`promoted` last, as the mark that the others are there)."""
    from mlflow.exceptions import MlflowException

    s = cfg.register
    recorded = mv.tags.get(f"{TAG}promoted")
    if recorded in ("true", "false"):
        prev = mv.tags.get(f"{TAG}previous_champion") or None
        return recorded == "true", mv.tags.get(f"{TAG}promotion", ""), prev
    try:
        champ = client.get_model_version_by_alias(name, s.champion_alias)
    except MlflowException:
        champ = None
    promote, reason = decide(tags, champ.tags if champ else None, s.min_improvement)
    prev = champ.version if champ else None
    client.set_model_version_tag(name, mv.version, f"{TAG}promotion", reason)
    client.set_model_version_tag(name, mv.version, f"{TAG}previous_champion", prev or "")
    client.set_model_version_tag(name, mv.version, f"{TAG}promoted", "true" if promote else "false")
    return promote, reason, prev


def run_register(
    cfg: RegisterConfig, *, evaluation: str, out: str, model: str | None = None
) -> dict[str, Any]:
    """Register the evaluated model (its MLflow model URI) and apply the promotion rule."""
    from mlflow.exceptions import MlflowException

    s = cfg.register
    metrics = storage.read_json(storage.join(evaluation, "metrics.json"))
    for key in ("split_hash", "mean_iou", "mean_dice"):
        if key not in metrics:
            raise SegloopError(
                f"{evaluation}/metrics.json has no {key!r}: is it an evaluate output?"
            )
    source = model or metrics.get("model_uri")
    if not source or not str(source).startswith(("models:/", "runs:/")):
        raise SegloopError(
            f"register needs the model as logged in MLflow (models:/m-<id> or runs:/<run>/model); "
            f"the evaluation used {metrics.get('model')!r}. Evaluate a train output folder or an "
            "MLflow URI, or pass --model"
        )
    mlflow = tracking.setup(cfg)
    client = tracking.client(cfg)
    name = tracking.registered_model_name(cfg)
    tags = version_tags(metrics)
    key = register_key(name, str(source), tags)
    try:
        mv = find_version(client, name, key)
        if mv is None:
            # The key is written with the version (one call), so a retry always finds it;
            # looked up again, since a retried POST may have made it twice.
            made = mlflow.register_model(str(source), name, tags={**tags, KEY_TAG: key})
            mv = find_version(client, name, key) or made
        else:
            log.info(
                "register: %s version %s is this model and evaluation: reused", name, mv.version
            )
        promote, reason, prev = _decision(client, name, mv, tags, cfg)
        client.set_registered_model_alias(name, s.challenger_alias, mv.version)
        if promote:
            client.set_registered_model_alias(name, s.champion_alias, mv.version)
        drop_duplicates(client, name, key, mv)
    except MlflowException as exc:
        raise SegloopError(
            f"MLflow registry at {mlflow.get_tracking_uri()}: {exc.message}"
        ) from exc
    decision = {
        "name": name,
        "version": int(mv.version),
        "source": str(source),
        "run_id": mv.run_id,
        "aliases": [s.challenger_alias] + ([s.champion_alias] if promote else []),
        "promoted": promote,
        "reason": reason,
        "previous_champion": int(prev) if prev else None,
        "mean_iou": metrics["mean_iou"],
        "split_hash": metrics["split_hash"],
    }
    verb = "promoted to" if promote else "not promoted to"
    log.info("register: %s version %s %s %s: %s", name, mv.version, verb, s.champion_alias, reason)
    with storage.output_dir(out, resume=False) as root:
        storage.write_json(root / "register.json", decision)
        write_metrics(root, {k: decision[k] for k in ("version", "promoted", "mean_iou")})
        save_resolved(cfg, root)
    return decision
