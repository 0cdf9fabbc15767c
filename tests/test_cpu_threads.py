"""The CPU thread policy: every core while the machine is otherwise idle, one fewer per core other processes keep
busy, a fixed count on request; what a run records about it."""

import argparse
import os
import subprocess
import sys
import time

import pytest
import torch

from training import cpu_threads as policy_module
from training.cpu_threads import AUTO, CpuThreads, cpu_threads_flag, physical_cores

TWO_CORES = len(os.sched_getaffinity(0)) >= 2 and physical_cores() >= 2


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


class _OtherBusyProcess:
    """A busy loop that is not this process's descendant (its parent exits at once), like another user's job."""

    def __enter__(self):
        # The loop must not inherit the pipes of this call, or reading them would never end.
        quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
        spawn = f"import subprocess; print(subprocess.Popen({BUSY_LOOP!r}, {quiet}).pid)"
        self.pid = int(subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True, check=True).stdout)
        return self

    def __exit__(self, *exc):
        os.kill(self.pid, 9)


def _settle(policy: CpuThreads, seconds: float) -> int:
    """Calls update() the way a training loop does, for `seconds`, while this process keeps one thread busy."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(range(20000))
        policy.update()
    return policy.threads


def test_the_flag_takes_auto_or_a_positive_count():
    assert cpu_threads_flag("auto") == AUTO
    assert cpu_threads_flag("3") == 3
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or a positive number of threads"):
            cpu_threads_flag(bad)


def _fake_proc(root, *, busy: int, total: int, own: int):
    """A /proc with two CPUs that spent `busy` of `total` ticks working, `own` of them in this process."""
    root.mkdir(exist_ok=True)
    per_cpu = f"{busy // 2} 0 0 {(total - busy) // 2} 0 0 0 0 0 0"
    (root / "stat").write_text(f"cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 {per_cpu}\ncpu1 {per_cpu}\nintr 0\n")
    me = root / str(os.getpid())
    me.mkdir(exist_ok=True)
    fields = ["S", "1", *["0"] * 9, str(own), "0", "0", "0", *["0"] * 30]  # state ppid ... utime stime cutime cstime
    (me / "stat").write_text(f"{os.getpid()} (python) {' '.join(fields)}\n")


@pytest.mark.parametrize("others_busy, threads", [(0, 2), (100, 1)])
def test_auto_starts_with_the_cores_other_processes_left_since_the_import(tmp_path, monkeypatch, others_busy, threads):
    # Two cores; since the module's import, this process used 100 ticks, others `others_busy` (100 = one core).
    monkeypatch.setattr(policy_module, "physical_cores", lambda: 2)
    monkeypatch.setattr(policy_module, "_allowed_cpus", lambda: {0, 1})
    monkeypatch.setattr(policy_module, "_IMPORT_CPUS", {0, 1})
    monkeypatch.setattr(policy_module, "_PROC", tmp_path / "then")
    _fake_proc(tmp_path / "then", busy=0, total=200, own=0)
    monkeypatch.setattr(policy_module, "_IMPORT_SAMPLE", (time.monotonic() - 1.0, policy_module._sample({0, 1})))
    monkeypatch.setattr(policy_module, "_PROC", tmp_path / "now")
    _fake_proc(tmp_path / "now", busy=100 + others_busy, total=400, own=100)

    policy = CpuThreads(AUTO, interval=60)
    assert policy.threads == threads == torch.get_num_threads()
    assert policy.describe() == {"cpu_thread_policy": "auto", "cpu_threads": 2}  # the share; the count is logged


def test_auto_created_right_after_the_import_starts_with_every_core_of_the_share(monkeypatch):
    just_now = (time.monotonic(), policy_module._sample(policy_module._IMPORT_CPUS))
    monkeypatch.setattr(policy_module, "_IMPORT_SAMPLE", just_now)
    policy = CpuThreads(AUTO, interval=60)  # too few clock ticks since the import to judge the load
    assert policy.threads == physical_cores() == torch.get_num_threads()


def _quiet_machine(policy: CpuThreads) -> int:
    """The thread count the machine's own load leaves; skips the test when that load already takes a core, since
    the test could not tell its busy process from the load that was there."""
    threads = _settle(policy, 1.5)
    if threads < physical_cores():
        pytest.skip(f"other processes already keep {physical_cores() - threads} core(s) busy; needs a quiet machine")
    return threads


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores to give one up")
def test_auto_gives_up_a_thread_beside_a_busy_process_and_takes_it_back_after():
    policy = CpuThreads(AUTO, interval=0.3)
    quiet = _quiet_machine(policy)
    with _OtherBusyProcess():
        assert _settle(policy, 2.0) == quiet - 1
        assert torch.get_num_threads() == quiet - 1
    assert _settle(policy, 2.0) == quiet
    assert policy.reductions >= 1


@pytest.mark.skipif(not TWO_CORES, reason="needs a second core for the busy child")
def test_its_own_child_processes_are_not_other_load():
    policy = CpuThreads(AUTO, interval=0.3)
    quiet = _quiet_machine(policy)
    child = subprocess.Popen(BUSY_LOOP)  # like a DataLoader worker: part of this job
    try:
        assert _settle(policy, 2.0) == quiet
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(not TWO_CORES, reason="needs a second core for the child")
def test_a_child_that_ended_still_counts_as_its_own_work():
    policy = CpuThreads(AUTO, interval=0.3)
    quiet = _quiet_machine(policy)
    # A subprocess that works for a second and is waited for (like a finished tool call) is this job's work.
    subprocess.run([sys.executable, "-c", "import time\nend = time.time() + 1.2\nwhile time.time() < end: pass"])
    policy._last_time = 0.0  # measure now, over the interval that held the child
    assert policy.update() == quiet


@pytest.mark.skipif(not TWO_CORES, reason="needs two cores")
def test_a_fixed_count_never_changes():
    policy = CpuThreads(1, interval=0.2)
    with _OtherBusyProcess():
        assert _settle(policy, 1.0) == 1
    assert _settle(policy, 1.0) == 1 and torch.get_num_threads() == 1
    assert policy.describe() == {"cpu_thread_policy": "1", "cpu_threads": 1}


def test_each_local_process_of_a_launch_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr(policy_module, "physical_cores", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert CpuThreads(AUTO).threads == 2


def test_smt_siblings_count_as_one_physical_core(tmp_path, monkeypatch):
    # cpu0/cpu1 are the two hardware threads of core 0, cpu2/cpu3 of core 1.
    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 1)):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text("0\n")
        (topology / "core_id").write_text(f"{core}\n")
    monkeypatch.setattr(policy_module, "_SYS_CPU", tmp_path)
    monkeypatch.setattr(policy_module, "_allowed_cpus", lambda: {0, 1, 2, 3})
    assert physical_cores() == 2


def test_off_the_cpu_it_leaves_torch_threads_alone():
    torch.set_num_threads(1)
    policy = CpuThreads(AUTO, device="cuda")
    assert torch.get_num_threads() == 1 and policy.update() == 1
    assert policy.describe()["cpu_thread_policy"] == "not on CPU"
