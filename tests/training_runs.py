"""Running `train_conditional.py` from tests (`accelerate launch`, or in this process for short runs);
`training.tracking.logged_scalars` reads what it logged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import cache
from types import ModuleType

import pytest

from conftest import REPO_ROOT, import_script
from training.cpu_threads import descendants

LAUNCH_TIMEOUT = 300  # seconds; a tiny run takes 10-30 s


def run_launch(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs an `accelerate launch` command; on a hang, kills the launcher and its workers and fails with their output.

    The workers are the launcher's children: killing only the launcher (what subprocess.run's timeout does) would
    leave them running, holding the CPU for the tests after this one.
    """
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        # The workers may sit in a process group of their own; one left alive keeps the pipes open forever.
        workers = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = process.communicate()
        pytest.fail(f"the launch did not finish in {LAUNCH_TIMEOUT} s: {' '.join(command)}\n"
                    f"stdout (end):\n{stdout[-2000:]}\nstderr (end):\n{stderr[-4000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def launch_training(
    *args: str, mixed_precision: str = "no", dynamo_backend: str = "no", check: bool = True
) -> subprocess.CompletedProcess:
    """One single-process training launch; with `check`, a failure shows the end of its stderr."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--dynamo_backend", dynamo_backend, "--mixed_precision", mixed_precision,
               str(REPO_ROOT / "train_conditional.py"), *args]  # fmt: skip
    result = run_launch(command)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@cache
def train_conditional() -> ModuleType:
    """train_conditional.py as a module (its `run(argv)` is the command line)."""
    return import_script("train_conditional", folder=".")


def train_in_process(*args: str) -> None:
    """`train_conditional.py ARGS` in this process, for tiny runs whose launch would cost more than the run: the
    same code path as a single-process launch, without the launcher. Accelerate's process-wide state is reset after.
    """
    from accelerate.state import AcceleratorState

    try:
        train_conditional().run(list(args))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)

