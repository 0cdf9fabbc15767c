"""The guard against a collapsed run: a finite loss that jumps back up and stays there stops training with a
one-line error, and no checkpoint is saved while the loss is up."""

import math
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from accelerate.state import PartialState

from training.stability import COLLAPSE_PATIENCE, LOSS_WINDOW, LossCollapseGuard, TrainingCollapsedError
from training.tracking import logged_scalars
from training_runs import train_conditional, train_in_process

TINY = ["--model_config_name_or_path", "tiny", "--resolution", "8", "--train_batch_size", "4",
        "--validation_steps", "100", "--validation_inference_steps", "1", "--use_ema"]  # fmt: skip
# From this step on the training loss is 50x higher and finite (Adam's steps keep their size). A real too-high LR is no
# reliable way to get there: which step goes non-finite first depends on the CPU's kernels (on an AMD EPYC the
# gradients of learning rate 0.3 turn NaN while the loss stays finite, which is NonFiniteGuard's case, not this one).
JUMP_STEP, JUMP_FACTOR = 15, 50.0


def _loss_that_jumps_at(step: int, factor: float, loss_function):
    """`diffusion_loss`, multiplied by `factor` from its `step`-th call on (one call per step here)."""
    calls = 0

    def loss(*args, **kwargs):
        nonlocal calls
        calls += 1
        value = loss_function(*args, **kwargs)
        return value * factor if calls >= step else value

    return loss


@pytest.fixture(autouse=True)
def _process_state():
    PartialState()  # Accelerate's logger needs the process state


def _healthy_losses(steps: int, seed: int = 0) -> list[float]:
    """A loss like this project's runs log: from ~0.2 down to ~0.004, each step's value swinging several-fold
    with its drawn timesteps, and now and then a step ten times the typical one."""
    rng = np.random.default_rng(seed)
    trend = 0.004 + 0.2 * np.exp(-np.arange(steps) / 60)
    losses = trend * rng.lognormal(0.0, 0.5, steps)
    spikes = rng.random(steps) < 0.01
    losses[spikes] *= 10
    return losses.tolist()


def _record_all(guard: LossCollapseGuard, losses: list[float], first_step: int = 1) -> list[bool]:
    return [guard.record(step, loss) for step, loss in enumerate(losses, first_step)]


def test_a_healthy_run_with_spiky_steps_is_never_collapsing():
    guard = LossCollapseGuard()

    assert not any(_record_all(guard, _healthy_losses(5000)))


def test_a_loss_back_at_its_starting_level_stops_the_run_after_the_patience_with_a_one_line_error():
    # The README's --learning_rate 2e-3 run: 0.004 after 3700 steps, then 0.2 (where it started) for good.
    guard = LossCollapseGuard()
    before = _record_all(guard, _healthy_losses(3700))
    after = []
    with pytest.raises(TrainingCollapsedError) as raised:
        for step in range(3701, 4701):
            after.append(guard.record(step, 0.2))

    first = 3701 + after.index(True)
    message = str(raised.value)
    assert not any(before) and all(after[after.index(True):])
    assert 3701 < first < 3701 + LOSS_WINDOW // 2  # a 50-fold jump shows within a few steps of the window
    last = first + COLLAPSE_PATIENCE - 1
    assert f"stayed above 10x that for {COLLAPSE_PATIENCE} steps (steps {first}-{last}; every loss finite)" in message
    assert "lower --learning_rate" in message and f"at or before step {first - LOSS_WINDOW}" in message
    assert "\n" not in message


def test_a_spike_shorter_than_the_patience_passes_and_the_run_goes_on():
    guard = LossCollapseGuard()
    _record_all(guard, _healthy_losses(2000))

    during = _record_all(guard, [0.2] * (COLLAPSE_PATIENCE // 2), first_step=2001)
    after = _record_all(guard, [0.004] * 2 * LOSS_WINDOW, first_step=2001 + COLLAPSE_PATIENCE // 2)

    assert any(during) and after[-1] is False


def test_non_finite_losses_are_left_to_the_non_finite_guard():
    guard = LossCollapseGuard(window=3, patience=2)
    _record_all(guard, [0.01] * 5)

    assert _record_all(guard, [math.nan, math.inf, math.nan], first_step=6) == [False, False, False]
    assert guard.record(9, 0.01) is False


def test_nothing_is_judged_before_a_whole_window_of_steps():
    guard = LossCollapseGuard(window=50, patience=1)

    assert not any(_record_all(guard, [0.001] * 10 + [1.0] * 39))  # 49 steps: no window yet, even after a resume


# ---- in a real run ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collapsed_run(tiny_iclevr_dir, tmp_path_factory) -> tuple[Path, str]:
    """A tiny run whose loss jumps 50x at step 15 and stays there; the guard watches 5-step windows for 10 steps,
    so the run stays short."""
    output_dir = tmp_path_factory.mktemp("collapsed") / "run"
    module = train_conditional()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "LossCollapseGuard", partial(LossCollapseGuard, window=5, patience=10))
        patch.setattr(module, "diffusion_loss", _loss_that_jumps_at(JUMP_STEP, JUMP_FACTOR, module.diffusion_loss))
        with pytest.raises(SystemExit) as stopped:
            train_in_process(*TINY, "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
                             "--max_train_steps", "40", "--checkpointing_steps", "1")  # fmt: skip
    return output_dir, str(stopped.value)


def test_a_run_whose_finite_loss_jumps_up_and_stays_stops_with_a_one_line_error(collapsed_run):
    output_dir, error = collapsed_run
    losses = logged_scalars(output_dir, "loss")
    first, last = map(int, re.search(r"steps (\d+)-(\d+); every loss finite", error).groups())

    assert error.startswith("error: training collapsed: the mean loss of the last 5 steps rose from ")
    assert "resume with a lower --learning_rate" in error and "\n" not in error
    assert JUMP_STEP <= first < JUMP_STEP + 5  # noticed within one window of the jump
    assert last - first + 1 == 10 and max(losses) == last < 40  # it stopped there, not at --max_train_steps
    assert all(math.isfinite(loss) for loss in losses.values())


def test_no_checkpoint_is_saved_while_the_loss_is_collapsing(collapsed_run):
    output_dir, error = collapsed_run
    first, last = map(int, re.search(r"steps (\d+)-(\d+); every loss finite", error).groups())
    healthy_until = int(re.search(r"saved at or before step (\d+)", error).group(1))
    saved = sorted(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))

    assert saved == list(range(1, first))  # every step until the collapse showed, none after (--checkpointing_steps 1)
    assert healthy_until in saved and healthy_until < JUMP_STEP  # the checkpoint it names predates the jump
