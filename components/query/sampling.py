"""`--sample` specs and deterministic sampling.

    random:n=N                              N rows; the seed is drawn now and saved in the spec
    seeded:n=N,seed=S                       N rows, the same ones for the same S everywhere
    stratified:by=c1|c2,per_group=N[,seed=S]   up to N rows per distinct (c1, c2)

Rows are ranked by a hash of (id, seed), not by the database's RANDOM(), so a seed picks the
same rows on SQLite and PostgreSQL, on any machine, and a row's rank does not depend on which
other rows matched. The rank key is `md5('<seed>:' || CAST(id AS TEXT))` as lowercase hex,
compared bytewise: the database computes it (PostgreSQL's built-in md5, and on SQLite the same
function registered by `components.core.db`), so sampling runs as SQL and only the chosen rows
leave the database. `rank_key` is the same key in Python (the reference the tests compare with).

Specs written before version 2 ranked by `stable_hash` (FNV-1a + splitmix64, computed in Python
over the candidate ids); replaying such a spec keeps that hash (`hash=fnv` in the sample spec),
so old `query_spec.json` files still give the same rows. That legacy hash and the Python
reference (`rank_keys`, `pick`) use numpy, imported when they run: a query that samples in SQL
(or not at all) never loads it, which keeps `segloop query` quick to start.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from components.core.errors import SegloopError
from components.query.settings import MAX_SQL_INT

if TYPE_CHECKING:
    import numpy as np

MODES = ("random", "seeded", "stratified")
HASHES = ("md5", "fnv")  # md5: in SQL (spec version 2 on); fnv: legacy, in Python
FORMS = "random:n=N | seeded:n=N,seed=S | stratified:by=c1|c2,per_group=N[,seed=S]"
FNV_OFFSET = 0xCBF29CE484222325  # as numpy.uint64 where used
FNV_PRIME = 0x100000001B3


@dataclass(frozen=True)
class Sampling:
    raw: str
    mode: str
    seed: int
    n: int | None = None
    by: tuple[str, ...] = ()
    per_group: int | None = None
    hash: str = "md5"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["by"] = list(self.by)
        data["resolved"] = self.resolved()
        return data

    def resolved(self) -> str:
        """The spec with its seed made explicit: replaying it gives the same rows."""
        legacy = ",hash=fnv" if self.hash == "fnv" else ""
        if self.mode == "stratified":
            by = "|".join(self.by)
            return f"stratified:by={by},per_group={self.per_group},seed={self.seed}{legacy}"
        return f"seeded:n={self.n},seed={self.seed}{legacy}"


def _int(text: str, key: str, raw: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SegloopError(f"sample {raw!r}: {key}={text!r} is not an integer") from None
    if value < minimum:
        raise SegloopError(f"sample {raw!r}: {key} must be >= {minimum}, got {value}")
    if value > MAX_SQL_INT:
        raise SegloopError(f"sample {raw!r}: {key} must be at most {MAX_SQL_INT} (2^63-1)")
    return value


def parse_sample(raw: str) -> Sampling:
    mode, sep, rest = raw.strip().partition(":")
    mode = mode.strip().lower()
    if mode not in MODES or not sep:
        raise SegloopError(f"cannot parse sample {raw!r}; forms: {FORMS}")
    params: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SegloopError(f"sample {raw!r}: {item!r} is not key=value; forms: {FORMS}")
        params[key.strip()] = value.strip()
    allowed = {
        "random": {"n", "hash"},
        "seeded": {"n", "seed", "hash"},
        "stratified": {"by", "per_group", "seed", "hash"},
    }
    required = {"random": {"n"}, "seeded": {"n", "seed"}, "stratified": {"by", "per_group"}}
    if unknown := set(params) - allowed[mode]:
        raise SegloopError(
            f"sample {raw!r}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"{mode} takes {', '.join(sorted(allowed[mode]))}"
        )
    if missing := required[mode] - set(params):
        raise SegloopError(f"sample {raw!r}: missing {', '.join(sorted(missing))}; forms: {FORMS}")
    hash_ = params.get("hash", "md5")
    if hash_ not in HASHES:
        raise SegloopError(
            f"sample {raw!r}: hash must be one of {', '.join(HASHES)}, got {hash_!r}"
        )
    # A random sample still gets a seed, drawn now and written to query_spec.json.
    seed = _int(params["seed"], "seed", raw, 0) if "seed" in params else secrets.randbelow(2**31)
    if mode == "stratified":
        by = tuple(c.strip() for c in params["by"].split("|") if c.strip())
        if not by:
            raise SegloopError(f"sample {raw!r}: by= needs at least one column, like by=state")
        per_group = _int(params["per_group"], "per_group", raw, 1)
        return Sampling(raw, mode, seed, by=by, per_group=per_group, hash=hash_)
    return Sampling(raw, mode, seed, n=_int(params["n"], "n", raw, 1), hash=hash_)


def key_prefix(seed: int) -> str:
    """What the rank key hashes before the id: `'<seed>:'`."""
    return f"{int(seed)}:"


def id_text(value: Any) -> str:
    """An id as `CAST(id AS TEXT)` gives it on SQLite and PostgreSQL (ints and strings)."""
    if isinstance(value, bool):
        raise SegloopError(f"a boolean ({value!r}) cannot be a sampling id")
    return value if isinstance(value, str) else str(value)


def rank_key(value: Any, seed: int) -> str:
    """The rank of one row: md5 of `'<seed>:' || id` as lowercase hex (what the SQL computes)."""
    return hashlib.md5((key_prefix(seed) + id_text(value)).encode("utf-8")).hexdigest()


def rank_keys(ids: Sequence[Any], seed: int, hash_: str = "md5") -> np.ndarray:
    """A uint64 per id, ordered as the full keys are (md5: its first 64 bits; fnv: stable_hash)."""
    import numpy as np

    if hash_ == "fnv":
        return stable_hash(ids, seed)
    return np.fromiter(
        (int(rank_key(i, seed)[:16], 16) for i in ids), dtype=np.uint64, count=len(ids)
    )


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads FNV's weak low bits over the whole word."""
    import numpy as np

    u64 = np.uint64
    h = h ^ (h >> u64(30))
    h = h * u64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> u64(27))
    h = h * u64(0x94D049BB133111EB)
    return h ^ (h >> u64(31))


def stable_hash(ids: Sequence[Any], seed: int) -> np.ndarray:
    """Legacy (spec version 1) rank: FNV-1a over the id's code points, seeded, then mixed.

    Depends only on (id text, seed): the same on every machine, numpy version and database.
    """
    import numpy as np

    u64 = np.uint64
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=u64)
    text = np.asarray(ids, dtype=str)
    width = text.dtype.itemsize // 4
    points = text.view(np.uint32).reshape(n, width)
    lengths = np.char.str_len(text)
    h = np.full(n, u64(FNV_OFFSET) ^ _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=u64))[0])
    step = np.empty_like(h)
    with np.errstate(over="ignore"):
        for j in range(width):
            # Only characters inside the id count: its hash must not depend on other ids' lengths.
            np.bitwise_xor(h, points[:, j], out=step, dtype=u64, casting="unsafe")
            step *= u64(FNV_PRIME)
            np.copyto(h, step, where=lengths > j)
        return _mix64(h)


def _sort_key(value: Any) -> tuple[bool, str]:
    return (value is not None, "" if value is None else str(value))


def group_codes(groups: Sequence[Any]) -> tuple[np.ndarray, int]:
    """A code per row, numbered in sorted group order (None first); and the number of groups."""
    import numpy as np

    first_seen: dict[Any, int] = {}
    codes = np.fromiter(
        (first_seen.setdefault(g, len(first_seen)) for g in groups),
        dtype=np.int64,
        count=len(groups),
    )
    keys = list(first_seen)
    if keys and isinstance(keys[0], tuple):
        ordered = sorted(range(len(keys)), key=lambda i: tuple(map(_sort_key, keys[i])))
    else:
        ordered = sorted(range(len(keys)), key=lambda i: _sort_key(keys[i]))
    remap = np.empty(len(keys), dtype=np.int64)
    remap[ordered] = np.arange(len(keys))
    return remap[codes], len(keys)


def pick(ids: Sequence[Any], sampling: Sampling, groups: Any = None) -> list[int]:
    """Indexes into `ids` of the sampled rows, in sample order (group, then hash rank).

    `groups` is one group value (or tuple) per row, or an int array of group codes. `ids`
    should come ordered by id so that equal hashes (practically never) still give one order.
    """
    import numpy as np

    ranks = rank_keys(ids, sampling.seed, sampling.hash)
    if sampling.mode != "stratified":
        return _lowest(ranks, sampling.n).tolist()
    if groups is None:
        raise ValueError("stratified sampling needs the group of every row")
    if isinstance(groups, np.ndarray) and groups.dtype.kind in "iu":
        codes, n_groups = groups.astype(np.int64), int(groups.max(initial=-1)) + 1
    else:
        codes, n_groups = group_codes(groups)
    if len(codes) > 1 and np.any(codes[1:] < codes[:-1]):
        order = np.argsort(codes, kind="stable")
        codes, ranks, back = codes[order], ranks[order], order
    else:
        back = None  # rows already come grouped (the database sorted them by group)
    bounds = np.searchsorted(codes, np.arange(n_groups + 1))
    picked = [
        lo + _lowest(ranks[lo:hi], sampling.per_group)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    chosen = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return (back[chosen] if back is not None else chosen).tolist()


def _lowest(ranks: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k lowest ranks in rank order (ties by position), without a full sort."""
    import numpy as np

    if k < len(ranks):
        part = np.argpartition(ranks, k - 1)[:k]
        # A rank equal to the k-th may sit outside the partition: take every tie, then cut.
        part = np.flatnonzero(ranks <= ranks[part].max())
    else:
        part = np.arange(len(ranks))
    return part[np.lexsort((part, ranks[part]))][:k]
