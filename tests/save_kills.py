"""Killing a process in the middle of `save_checkpoint`, then resuming: the helper of tests/test_checkpoints.py.

    python tests/save_kills.py OUTPUT_DIR --limit 1 [--seconds_kills 8] [--disk_full]

It imports torch once, then forks one child per trial (the parent itself never runs a torch op, so forking is safe).
Every child tidies OUTPUT_DIR, verifies every checkpoint in it, resumes from "latest" with the real
`load_checkpoint`, trains one real step of the `tiny` model with EMA and saves it with `--checkpoints_total_limit`
LIMIT. Trial k kills its child with SIGKILL at the k-th file operation that the save makes in OUTPUT_DIR (counted by
an audit hook), for every k of a save; then children are killed after random delays. With --disk_full a child saves
under a file-size limit, as on a full disk. Prints one JSON object per child: what it found and what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from diffusers.optimization import get_scheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from pipeline import ConditionalUNet2DModel  # noqa: E402
from training.checkpoint_files import CheckpointError, verify_checkpoint  # noqa: E402
from training.checkpointing import (  # noqa: E402
    checkpoint_signature,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
    tidy_checkpoints,
)
from training.ema_state import parameter_shapes, register_ema_checkpointing  # noqa: E402
from training.model_presets import create_model  # noqa: E402

RESOLUTION = 8


def child(output_dir: Path, limit: int, kill_at: int | None, file_size_limit: int | None, report) -> None:
    """One trial (in a forked process): check what is there, resume, one step, save; killed at `kill_at`."""
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    model = create_model("tiny", sample_size=RESOLUTION)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    ema = EMAModel(model.parameters(), model_cls=ConditionalUNet2DModel, model_config=model.config)
    register_ema_checkpointing(accelerator, ema)
    signature = checkpoint_signature(argparse.Namespace(model_config_name_or_path="tiny", resolution=RESOLUTION,
                                                        use_ema=True, prediction_type="epsilon"), model)  # fmt: skip
    shapes = parameter_shapes(model)

    tidy_checkpoints(output_dir)
    found, unreadable = [], []
    for path in list_checkpoints(output_dir):
        try:
            verify_checkpoint(path, signature, shapes)
            found.append(checkpoint_step(path))
        except CheckpointError as error:
            unreadable.append(str(error))
    leftovers = sorted(p.name for p in output_dir.iterdir() if not p.name.startswith("checkpoint-") or "." in p.name)
    checkpoint = resolve_resume_checkpoint("latest", output_dir, signature, shapes, warn=lambda message: None)
    step = 0
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint)
        step = checkpoint_step(checkpoint)
    report({"found": found, "unreadable": unreadable, "leftovers": leftovers, "resumed": step,
            "ema_step": ema.optimization_step})  # fmt: skip

    generator = torch.Generator().manual_seed(step)
    images, labels = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=generator), torch.zeros(2, 24)
    loss = model(images, torch.tensor([10, 500]), class_labels=labels).sample.pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    lr_scheduler.step()
    ema.step(model.parameters())

    if file_size_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    events = _EventCounter(output_dir, kill_at)
    sys.addaudithook(events)
    try:
        save_checkpoint(accelerator, output_dir, step + 1, limit, signature)
    except CheckpointError as error:
        report({"save_failed": str(error)})
        return
    report({"saved": step + 1, "events": events.count})


class _EventCounter:
    """An audit hook counting the events that name a path in `output_dir`; SIGKILLs this process at `kill_at`."""

    def __init__(self, output_dir: Path, kill_at: int | None):
        self.root, self.kill_at, self.count = str(output_dir), kill_at, 0

    def __call__(self, event: str, args: tuple) -> None:
        if any(isinstance(arg, (str, os.PathLike)) and os.fspath(arg).startswith(self.root) for arg in args):
            if self.count == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            self.count += 1


def trial(output_dir: Path, limit: int, kill_at: int | None = None, kill_after: float | None = None,
          file_size_limit: int | None = None) -> list[dict]:  # fmt: skip
    """Runs one child, killed `kill_after` seconds after it resumed if given; returns its reports and its end."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        report = lambda record: os.write(write_fd, (json.dumps(record) + "\n").encode())  # noqa: E731
        _in_child(lambda: child(output_dir, limit, kill_at, file_size_limit, report))
    os.close(write_fd)
    records = []
    with os.fdopen(read_fd) as pipe:
        for line in pipe:
            records.append({**json.loads(line), "at": time.monotonic()})
            if kill_after is not None and "resumed" in records[-1]:
                time.sleep(kill_after)
                os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return records + [{"killed": os.WIFSIGNALED(status), "exit_code": os.waitstatus_to_exitcode(status)}]


def _in_child(body) -> None:
    code = 0
    try:
        body()
    except BaseException as error:  # noqa: BLE001 - reported to the parent, the child must never return
        print(f"child failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        code = 3
    finally:
        os._exit(code)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--seconds_kills", type=int, default=0, help="extra trials killed after a random delay")
    parser.add_argument("--disk_full", action="store_true", help="one save under a file-size limit, then a resume")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    trials = [trial(args.output_dir, args.limit) for _ in range(2)]  # checkpoints there are to lose
    if args.disk_full:
        trials += [trial(args.output_dir, args.limit, file_size_limit=64 * 1024), trial(args.output_dir, args.limit)]
    else:
        trials.append(trial(args.output_dir, args.limit))
        resumed, saved = trials[-1][0], trials[-1][1]
        events = saved["events"]  # how many audited file operations one save makes
        trials += [trial(args.output_dir, args.limit, kill_at=k) for k in range(events)]
        save_seconds = saved["at"] - resumed["at"]  # the training step and the save
        rng = random.Random(0)
        trials += [trial(args.output_dir, args.limit, kill_after=rng.uniform(0, save_seconds))
                   for _ in range(args.seconds_kills)]  # fmt: skip
        trials.append(trial(args.output_dir, args.limit))  # the last one finds what the last kill left
    print(json.dumps(trials))


if __name__ == "__main__":
    main()
