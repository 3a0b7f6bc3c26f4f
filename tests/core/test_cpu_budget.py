"""The CPU budget: quotas from fake cgroup files (v1, v2, hybrid, nested, no limit, fractional),
the affinity mask, the SEGLOOP_CPU_THREADS override, and a real CPU-limited cgroup (as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO_ROOT  # tests/ is on sys.path

from components.core import cpu_budget
from components.core.cpu_budget import ENV, CpuBudget, quota_cpus
from components.core.errors import ConfigError

V1_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct"
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"
V2_ONLY = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"


def fake_root(tmp_path: Path, mounts: list[str], cgroup: str, files: dict[str, str]) -> Path:
    """A folder with proc/self/{mountinfo,cgroup} and the cgroup files (path -> content)."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mountinfo").write_text("\n".join(mounts) + "\n")
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return tmp_path


def v1(tmp_path, quota: int, period: int = 100000, path: str = "/pod") -> Path:
    folder = f"sys/fs/cgroup/cpu,cpuacct{path}"
    return fake_root(
        tmp_path,
        [V1_MOUNT, V2_MOUNT],
        f"4:memory:/x\n2:cpu,cpuacct:{path}\n0::/\n",
        {f"{folder}/cpu.cfs_quota_us": f"{quota}\n", f"{folder}/cpu.cfs_period_us": f"{period}\n"},
    )


def v2(tmp_path, cpu_max: str, path: str = "/kubepods/pod1") -> Path:
    return fake_root(
        tmp_path, [V2_ONLY], f"0::{path}\n", {f"sys/fs/cgroup{path}/cpu.max": cpu_max + "\n"}
    )


def test_v1_quota(tmp_path):
    assert quota_cpus(v1(tmp_path, 200000))[0] == 2.0


def test_v1_no_limit(tmp_path):
    assert quota_cpus(v1(tmp_path, -1)) is None


def test_v2_quota_and_period(tmp_path):
    assert quota_cpus(v2(tmp_path, "150000 100000"))[0] == 1.5


def test_v2_max_is_no_limit(tmp_path):
    assert quota_cpus(v2(tmp_path, "max 100000")) is None


def test_no_cgroup_files(tmp_path):
    assert quota_cpus(tmp_path) is None


def test_ancestor_limit_counts(tmp_path):
    """A limit on the pod's cgroup holds for the container's cgroup below it."""
    root = v2(tmp_path, "max 100000", path="/kubepods/pod1/ctr")
    (root / "sys/fs/cgroup/kubepods/pod1/cpu.max").write_text("50000 100000\n")
    cpus, source = quota_cpus(root)
    assert cpus == 0.5
    assert "/kubepods/pod1" in source and "ctr" not in source


def test_own_cgroup_namespace(tmp_path):
    """In a container with its own cgroup namespace, /proc shows `/` and the mount holds the
    container's own files."""
    assert quota_cpus(v2(tmp_path, "300000 100000", path="/"))[0] == 3.0


def test_path_outside_the_mount_reads_the_mount(tmp_path):
    root = fake_root(
        tmp_path,
        ["30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw"],
        "0::/elsewhere\n",
        {"sys/fs/cgroup/cpu.max": "100000 100000\n"},
    )
    assert quota_cpus(root)[0] == 1.0


@pytest.mark.parametrize(
    ("quota", "threads"), [(50000, 1), (100000, 1), (140000, 1), (150000, 2), (10000, 1)]
)
def test_fractional_quota_rounds_to_nearest(tmp_path, monkeypatch, quota, threads):
    monkeypatch.delenv(ENV, raising=False)
    budget = cpu_budget.cpu_budget(v1(tmp_path, quota))
    # The quota is below this machine's affinity only when it has more CPUs than the quota.
    if quota / 100000 < cpu_budget.affinity_cpus():
        assert budget.threads == threads
        assert "cpu.cfs_quota_us" in budget.why


def test_affinity_smaller_than_quota(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})  # the kernel's real mask, restored below
    try:
        budget = cpu_budget.cpu_budget(v1(tmp_path, 800000))
    finally:
        os.sched_setaffinity(0, before)
    assert budget.threads == 1
    assert "affinity" in budget.why


def test_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "6")
    budget = cpu_budget.cpu_budget(v1(tmp_path, 50000))
    assert budget == CpuBudget(6, f"{ENV}=6")


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "many"])
def test_bad_override_is_one_clear_error(tmp_path, monkeypatch, bad):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ConfigError, match=f"{ENV}='{bad}' is not a positive whole number"):
        cpu_budget.cpu_budget(tmp_path)


def test_ranks_share_the_budget():
    assert CpuBudget(8, "").per_rank(2) == 4
    assert CpuBudget(3, "").per_rank(2) == 1
    assert CpuBudget(1, "").per_rank(4) == 1


CHILD = """
import json, logging, torch
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
from components.core.cpu_budget import apply_torch_threads
first = apply_torch_threads()
second = apply_torch_threads(local_ranks=1)  # once per process: the first pick stays
print(json.dumps([first, second, torch.get_num_threads(), torch.get_num_interop_threads()]))
"""


def _child(env: dict[str, str], preexec=None) -> tuple[list[int], str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**{k: v for k, v in os.environ.items() if k != ENV}, **env},
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=preexec,
        cwd=REPO_ROOT,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_apply_sets_intra_and_inter_op_threads_per_rank():
    numbers, log = _child({ENV: "4", "LOCAL_WORLD_SIZE": "2"})
    assert numbers == [2, 2, 2, 2]
    picks = [line for line in log.splitlines() if "cpu budget:" in line]
    assert len(picks) == 1
    assert f"4 threads from {ENV}=4, shared by 2 local processes" in picks[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a cgroup needs root")
def test_real_cgroup_quota():
    """A real CPU-limited cgroup (the bench's): the process inside picks 1 thread at 0.5 CPU."""
    from benchmarks.cgroups import NoCgroup, cpu_cgroup

    try:
        with cpu_cgroup(f"segloop-test-{os.getpid()}", cpus=0.5) as procs:
            numbers, log = _child(
                {"LOCAL_WORLD_SIZE": "1"}, lambda: procs.write_text(str(os.getpid()))
            )
            folder = procs.parent
    except NoCgroup as exc:
        pytest.skip(str(exc))
    assert numbers[0] == 1
    assert "cpu.cfs_quota_us 50000" in log or "cpu.max 50000" in log
    assert not folder.exists()  # removed on exit


def test_workers_follow_the_budget(monkeypatch):
    import torch

    from components.infer.stage import decode_workers
    from components.train.engine import pick_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv(ENV, "1")
    assert (decode_workers(None, cpu), decode_workers(None, cuda)) == (1, 1)
    assert (pick_workers(None, cpu), pick_workers(None, cuda)) == (0, 1)
    monkeypatch.setenv(ENV, "16")
    assert (decode_workers(None, cpu), decode_workers(None, cuda)) == (2, 8)
    assert pick_workers(None, cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks share 16 CPUs: 2 workers each
    assert pick_workers(None, cuda) == 2
    assert decode_workers(3, cuda) == pick_workers(3, cuda) == 3  # a setting wins
