"""The CPU budget this process really has, and the compute threads and workers sized to it.

A task pod runs under a CPU limit (a CFS quota), not on its own cores: `os.cpu_count()` and
torch's default thread count see the node's cores, so a pod limited to 2 CPUs on a 64-core
node would run 64 compute threads and be throttled in every period. The budget is, first
match wins:

1. `SEGLOOP_CPU_THREADS` (a whole number): the threads this pod or machine may use, whatever
   the quota and affinity say;
2. the smallest of the CFS quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` /
   `cpu.cfs_period_us`, of this process's cgroup and every ancestor up to the mount) and the
   CPUs in the affinity mask (`os.sched_getaffinity`, which a cpuset narrows).

A fractional quota rounds to the nearest whole thread, at least 1 (0.5 CPU: 1 thread, 1.5: 2,
2.4: 2). Several training processes on one machine (DDP ranks; `LOCAL_WORLD_SIZE`) share it.

Hand-written, not joblib's `loky.cpu_count`: that reads only the cgroup root's files, which is
right inside a container with its own cgroup namespace but blind to the process's own cgroup
on a host, in a nested cgroup, or in hybrid v1/v2 mounts like this one.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from components.core.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "SEGLOOP_CPU_THREADS"


@dataclass(frozen=True)
class CpuBudget:
    threads: int  # compute threads for the whole pod or machine
    why: str  # where the number came from, in words (logged at debug level)

    def per_rank(self, local_ranks: int) -> int:
        """Each of `local_ranks` processes on this machine gets its share, at least 1."""
        return max(1, self.threads // max(1, local_ranks))


@dataclass(frozen=True)
class CgroupMount:
    version: int  # 1 or 2
    root: str  # the cgroup path the mount shows (mountinfo's 4th field)
    point: str  # where it is mounted


def cpu_budget(root: Path = Path("/")) -> CpuBudget:
    """The CPU budget of this process (`root`: where /proc and /sys are, for tests)."""
    given = os.environ.get(ENV, "").strip()
    if given:
        return CpuBudget(_whole_number(given), f"{ENV}={given}")
    cpus = affinity_cpus()
    quota = quota_cpus(root)
    if quota is None:
        return CpuBudget(cpus, f"{cpus} CPUs in the affinity mask, no CPU quota")
    limit, source = quota
    if limit >= cpus:
        return CpuBudget(cpus, f"{cpus} CPUs in the affinity mask ({source}: {limit:g} CPUs)")
    threads = max(1, math.floor(limit + 0.5))
    return CpuBudget(threads, f"{source}: {limit:g} CPUs (affinity mask: {cpus})")


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            f"{ENV}={text!r} is not a positive whole number; set the threads this pod may use "
            "(e.g. 4), or unset it to size them from the CPU quota"
        )
    return value


def affinity_cpus() -> int:
    """CPUs this process may run on (all of the machine's where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def quota_cpus(root: Path = Path("/")) -> tuple[float, str] | None:
    """The tightest CFS quota over this process's cgroups, in CPUs, and which file set it;
    None when no cgroup limits the CPU (no quota, `max`, -1, or no cgroup files)."""
    mounts = cpu_cgroup_mounts(root)
    tightest: tuple[float, str] | None = None
    for version, path in _own_cgroups(root):
        mount = mounts.get(version)
        if mount is None:
            continue
        for folder in _up_to_mount(root, mount, path):
            found = _quota_in(folder, version)
            if found is not None and (tightest is None or found[0] < tightest[0]):
                tightest = (found[0], f"{found[1]} in /{folder.relative_to(root)}")
    return tightest


def cpu_cgroup_mounts(root: Path = Path("/")) -> dict[int, CgroupMount]:
    """The v1 mount with the `cpu` controller and the v2 (unified) mount, from mountinfo."""
    mounts: dict[int, CgroupMount] = {}
    try:
        lines = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], (after[2] if len(after) > 2 else "")
        if fstype == "cgroup2":
            mounts.setdefault(2, CgroupMount(2, fields[3], fields[4]))
        elif fstype == "cgroup" and "cpu" in options.split(","):
            mounts.setdefault(1, CgroupMount(1, fields[3], fields[4]))
    return mounts


def _own_cgroups(root: Path) -> list[tuple[int, str]]:
    """(1, path of the v1 cpu cgroup) and (2, path of the unified cgroup), from /proc."""
    own = []
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return own
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            own.append((2, path))
        elif "cpu" in controllers.split(","):
            own.append((1, path))
    return own


def _up_to_mount(root: Path, mount: CgroupMount, path: str) -> list[Path]:
    """The process's cgroup folder and its ancestors up to the mount point, deepest first.

    A path outside the mount's root (another cgroup namespace) means only the mount point."""
    base = root / mount.point.lstrip("/")
    inside = path == mount.root or path.startswith(mount.root.rstrip("/") + "/")
    relative = os.path.relpath(path, mount.root) if inside else "."
    parts = [p for p in Path(relative).parts if p not in (".", "/")]
    folders = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [f for f in folders if f.is_dir()]


def _quota_in(folder: Path, version: int) -> tuple[float, str] | None:
    try:
        if version == 2:
            text = (folder / "cpu.max").read_text().split()
            if not text or text[0] == "max":
                return None
            quota, period = int(text[0]), int(text[1]) if len(text) > 1 else 100_000
            name = f"cpu.max {quota} {period}"
        else:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            name = f"cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
    except (OSError, ValueError, IndexError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period, name


def local_processes() -> int:
    """Processes sharing this machine's budget: $LOCAL_WORLD_SIZE (torchrun and segloop's DDP
    launcher set it in each rank), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


_applied: tuple[int, int] | None = None  # (intra-op, inter-op) threads set in this process


def apply_torch_threads(local_ranks: int | None = None) -> int:
    """Set torch's intra-op and inter-op threads from the budget, once per process; returns
    the intra-op count. `local_ranks`: processes sharing this machine (default:
    `local_processes()`)."""
    global _applied
    if _applied is not None:
        return _applied[0]
    import torch  # not at import: `segloop query` never loads torch

    ranks = local_ranks or local_processes()
    budget = cpu_budget()
    threads = budget.per_rank(ranks)
    torch.set_num_threads(threads)
    interop = torch.get_num_interop_threads()
    try:
        # Only before any inter-op work has started; a library that already started it keeps
        # its pool (inter-op threads mostly wait, so this only saves idle threads).
        torch.set_num_interop_threads(threads)
        interop = threads
    except RuntimeError:
        pass
    _applied = (threads, interop)
    log.debug(
        "cpu budget: %d intra-op / %d inter-op torch threads per process (%d threads from %s%s)",
        threads,
        interop,
        budget.threads,
        budget.why,
        f", shared by {ranks} local processes" if ranks > 1 else "",
    )
    return threads
