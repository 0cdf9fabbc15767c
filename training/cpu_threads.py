"""How many threads CPU work uses: every core of this process's share while the machine is otherwise idle, one
fewer for each core that other processes keep busy.

Why not simply all cores: PyTorch splits each operator across its OpenMP threads and waits at a barrier for the
slowest one. When another busy process (a second job, an IDE indexer, a test run) takes one of the cores, the thread
on that core runs only part of the time, every barrier waits for its timeslice, and the whole step slows 4-50x -
far more than the one core lost (2-core CPU, `cpu` preset, 32x32, bf16: 133 images/s idle on two threads, 36 beside
one busy process; one thread gives 77 idle and 82 beside it). `OMP_WAIT_POLICY=PASSIVE` changes how threads wait,
not what they wait for (30 images/s). Why not one core fewer always: on an idle 2-core machine that costs 40 %.

So the `auto` policy measures, about once a second, how much CPU time other processes took (from /proc/stat,
minus this process and its children, minus the cores owed to sibling ranks of the same launch) and sets
`torch.set_num_threads` to the cores left. Call `update()` often from the thread that runs the model (OpenMP's
thread count is per calling thread); it costs a clock read except when it re-measures.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

AUTO = "auto"
# Other processes' load (in cores) from which one thread is given up: a background task at 30 % of a core leaves
# the barriers mostly undisturbed, a busy process (~0.6-1 core) does not.
YIELD_THRESHOLD = 0.5
MEASURE_INTERVAL = 1.0  # seconds between two looks at /proc/stat
_PROC = Path("/proc")
_SYS_CPU = Path("/sys/devices/system/cpu")


def cpu_threads_flag(value: str) -> str | int:
    """The `--cpu_threads` value: "auto" or a positive thread count."""
    if value == AUTO:
        return AUTO
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive number of threads, got {value!r}")
    return threads


def add_cpu_threads_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--cpu_threads", type=cpu_threads_flag, default=AUTO,
        help="Threads per process on CPU: 'auto' (default) uses every core of the process's share while the "
             "machine is otherwise idle and gives one up for each core other processes keep busy; N fixes the count.",
    )  # fmt: skip


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (SMT siblings share one core's execution units, so
    PyTorch's own default counts cores, not logical CPUs)."""
    cores = set()
    for cpu in sorted(_allowed_cpus()):
        topology = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            package, core = ((topology / name).read_text().strip() for name in ("physical_package_id", "core_id"))
            cores.add(f"{package}:{core}")
        except OSError:
            cores.add(str(cpu))  # no topology information: count the CPU as its own core
    return max(1, len(cores))


def local_processes() -> int:
    """Processes of this launch on this machine (torchrun / `accelerate launch` export LOCAL_WORLD_SIZE)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _allowed_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _busy_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot, summed over `cpus`; None where /proc/stat does not exist."""
    try:
        lines = (_PROC / "stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal (guest is in user)
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy, total


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU clock ticks) of every live process, from /proc."""
    table = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        # utime + stime + cutime + cstime: a child that ended (a finished worker, a subprocess) still counts as own
        table[int(entry.name)] = (int(fields[1]), sum(int(value) for value in fields[11:15]))
    return table


def descendants(root: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """The live descendants of process `root` (its children, theirs, ...)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in (table if table is not None else _process_table()).items():
        children.setdefault(parent, []).append(pid)
    found, frontier = [], [root]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            found.append(child)
            frontier.append(child)
    return found


def _process_tree_ticks(root: int) -> int:
    """CPU clock ticks used by `root` and its live descendants (e.g. DataLoader workers)."""
    table = _process_table()
    return sum(table.get(pid, (0, 0))[1] for pid in [root, *descendants(root, table)])


def _sample(cpus: set[int]) -> tuple[int, int, int] | None:
    """(busy, total) ticks of `cpus` and this process tree's ticks; None where /proc/stat does not exist."""
    ticks = _busy_ticks(cpus)
    return None if ticks is None else (*ticks, _process_tree_ticks(os.getpid()))


# The first look at the load, taken when this module is imported: a process creates its CpuThreads after seconds of
# importing torch and diffusers, so its first thread count already follows the load over that time. Without it, a
# short run beside a busy process (a CLI call, a test's subprocess) would spend its first second on every core.
MIN_FIRST_WINDOW = 0.2  # seconds; a shorter window holds too few clock ticks to judge
_IMPORT_CPUS = _allowed_cpus()
_IMPORT_SAMPLE = (time.monotonic(), _sample(_IMPORT_CPUS))


class CpuThreads:
    """The CPU thread policy of one process: `auto` (adapts to other load) or a fixed count.

    threads: the count in use now. describe(): what to record in run_info.json and the tracker config.
    """

    def __init__(
        self, policy: str | int = AUTO, *, device: torch.device | str = "cpu", interval: float = MEASURE_INTERVAL
    ):
        self.policy = policy
        self.interval = interval
        self.on_cpu = torch.device(device).type == "cpu"
        self.share = max(1, physical_cores() // local_processes())
        self.cpus = _allowed_cpus()
        # Measuring needs /proc (Linux); elsewhere `auto` keeps the whole share. Off the CPU, threads only feed the
        # accelerator and PyTorch's default stays.
        self.adaptive = self.on_cpu and policy == AUTO and _busy_ticks(self.cpus) is not None
        self.max_threads = self.share if policy == AUTO else int(policy)
        self.threads = self.max_threads if self.on_cpu else torch.get_num_threads()
        self.reductions = 0  # how often other load made it give up threads
        if self.on_cpu:
            torch.set_num_threads(self.threads)
        self._last_time = time.monotonic()
        self._last_sample = _sample(self.cpus) if self.adaptive else None
        imported_at, imported_sample = _IMPORT_SAMPLE
        if self.adaptive and self.cpus == _IMPORT_CPUS and self._last_time - imported_at >= MIN_FIRST_WINDOW:
            self._last_sample = imported_sample
            self._set(self.other_load())

    def other_load(self) -> float:
        """Cores' worth of CPU that other processes used since the last measurement (sibling ranks excluded)."""
        sample = _sample(self.cpus)
        busy, total, own = (now - before for now, before in zip(sample, self._last_sample))
        self._last_sample = sample
        if total <= 0:
            return 0.0
        cores_per_tick = len(self.cpus) / total  # total: every allowed CPU's ticks over the interval
        siblings = (local_processes() - 1) * self.share
        return max(0.0, (busy - own) * cores_per_tick - siblings)

    def update(self) -> int:
        """Re-measures other processes' load if `interval` has passed and sets the thread count; returns it."""
        if not self.adaptive:
            return self.threads
        now = time.monotonic()
        if now - self._last_time < self.interval:
            return self.threads
        self._last_time = now
        self._set(self.other_load())
        return self.threads

    def _set(self, other_load: float) -> None:
        """The share minus one thread per core of `other_load` (rounded at YIELD_THRESHOLD), at least one."""
        threads = min(self.share, max(1, self.share - math.floor(other_load + (1 - YIELD_THRESHOLD))))
        if threads != self.threads:
            self.reductions += threads < self.threads
            self.threads = threads
            torch.set_num_threads(threads)

    def step_callback(self, pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        """A diffusers `callback_on_step_end` that keeps the policy up to date while a pipeline samples."""
        self.update()
        return {}

    def describe(self) -> dict[str, str | int]:
        """The policy as run_info.json and the tracker config record it."""
        if not self.on_cpu:
            return {"cpu_thread_policy": "not on CPU", "cpu_threads": self.threads}
        policy = self.policy if self.policy != AUTO or self.adaptive else "auto (no /proc/stat: fixed)"
        return {"cpu_thread_policy": str(policy), "cpu_threads": self.max_threads}
