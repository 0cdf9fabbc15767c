"""The training objective: targets per prediction type, Min-SNR weights, biased timestep draws, and the flags."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from safetensors.torch import load_file

from training.args import parse_args
from training.model_presets import create_model
from training.objective import diffusion_loss, min_snr_weights, timestep_weights, training_target
from training_runs import launch_training, train_in_process


def _scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type)


def test_each_prediction_type_has_its_target():
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 250, 600, 999])
    alpha = _scheduler().alphas_cumprod[t].sqrt()[:, None, None, None]
    sigma = (1 - _scheduler().alphas_cumprod[t]).sqrt()[:, None, None, None]
    assert torch.equal(training_target(_scheduler("epsilon"), x0, noise, t), noise)
    v_target = training_target(_scheduler("v_prediction"), x0, noise, t)
    assert torch.allclose(v_target, alpha * noise - sigma * x0, atol=1e-6)
    assert torch.equal(training_target(_scheduler("sample"), x0, noise, t), x0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_gives_every_timestep_an_x0_weight_of_min_snr_gamma(prediction_type):
    scheduler, t = _scheduler(prediction_type), torch.arange(0, 1000, 37)
    snr = compute_snr(scheduler, t)
    # An error e in x0 is an error of e*sqrt(snr) in epsilon and e*sqrt(snr + 1) in v.
    to_x0 = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    assert torch.allclose(min_snr_weights(scheduler, t, 5.0) * to_x0, snr.clamp(max=5.0), rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_an_snr_offset_gives_every_timestep_an_x0_weight_of_min_snr_plus_offset_gamma(prediction_type):
    scheduler, t = _scheduler(prediction_type), torch.arange(0, 1000, 37)
    snr = compute_snr(scheduler, t)
    to_x0 = {"v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    weights = min_snr_weights(scheduler, t, 5.0, snr_offset=0.5)
    assert torch.allclose(weights * to_x0, (snr + 0.5).clamp(max=5.0), rtol=1e-5)


def test_an_snr_offset_keeps_that_share_of_the_plain_v_loss_on_the_noisiest_steps_and_damps_the_least_noisy_alike():
    scheduler, t = _scheduler("v_prediction"), torch.tensor([0, 100, 500, 900, 999])
    offset, paper = min_snr_weights(scheduler, t, 5.0, snr_offset=0.5), min_snr_weights(scheduler, t, 5.0)
    assert offset[-1] == pytest.approx(0.5) and paper[-1] < 1e-6  # the last timestep: SNR ~2e-9
    assert torch.allclose(offset[:2], paper[:2])  # SNR above gamma: both clamp at gamma


def test_later_bias_draws_the_noisiest_timesteps_that_much_more_often():
    probabilities = timestep_weights(1000, "later", multiplier=3.0, portion=0.25)
    assert torch.isclose(probabilities[750:].sum(), torch.tensor(0.5))  # 3 x 250 against 750
    assert timestep_weights(1000, "later", multiplier=1.0) is None and timestep_weights(1000, "none") is None
    assert torch.isclose(timestep_weights(1000, "range", multiplier=2.0, begin=100, end=200)[100:200].sum(),
                         torch.tensor(200 / 1100))


class _Recorder(torch.nn.Module):
    """A stand-in UNet that keeps the timesteps and labels the loss gives it."""

    def __init__(self):
        super().__init__()
        self.timesteps, self.class_labels = [], []

    def forward(self, sample, timestep, class_labels):
        self.timesteps.append(timestep)
        self.class_labels.append(class_labels)
        return type("Out", (), {"sample": torch.zeros_like(sample)})()


def test_the_loss_draws_timesteps_from_the_given_probabilities():
    recorder = _Recorder()
    probabilities = timestep_weights(1000, "range", multiplier=1e9, begin=900, end=1000)
    for seed in range(20):
        diffusion_loss(recorder, _scheduler(), torch.zeros(16, 3, 4, 4), torch.zeros(16, 24), label_dropout=0.1,
                       generator=torch.Generator().manual_seed(seed), timestep_probabilities=probabilities)
    assert torch.cat(recorder.timesteps).min() >= 900


def test_by_default_one_training_image_in_twenty_gets_the_unconditional_all_zero_labels():
    recorder, label_dropout = _Recorder(), parse_args([]).label_dropout
    for seed in range(50):
        diffusion_loss(recorder, _scheduler(), torch.zeros(128, 3, 4, 4), torch.ones(128, 24),
                       label_dropout=label_dropout, generator=torch.Generator().manual_seed(seed))
    unconditional = (torch.cat(recorder.class_labels).sum(dim=1) == 0).float().mean().item()
    assert unconditional == pytest.approx(0.05, abs=0.01)  # 6400 draws: 0.1 would be 18 standard deviations away


def test_min_snr_weighting_changes_the_loss_of_the_same_draws():
    model = create_model("tiny", sample_size=8)
    x0, labels = torch.rand(4, 3, 8, 8) * 2 - 1, torch.zeros(4, 24)

    def loss(prediction_type: str = "epsilon", **weighting) -> float:
        return diffusion_loss(model, _scheduler(prediction_type), x0, labels, label_dropout=0.0,
                              generator=torch.Generator().manual_seed(0), **weighting).item()

    assert loss() == loss()  # the same draws
    assert loss(snr_gamma=5.0) != pytest.approx(loss())
    v_paper = loss("v_prediction", snr_gamma=5.0)
    assert loss("v_prediction", snr_gamma=5.0, snr_offset=0.5) != pytest.approx(v_paper)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--prediction_type", "v"], "invalid choice: 'v'"),
        (["--snr_gamma", "0"], "must be a positive number or 'none'"),
        (["--snr_offset", "-1"], "--snr_offset: must be 0 or more"),
        (["--snr_offset", "0.5", "--snr_gamma", "none"], "takes effect with a Min-SNR --snr_gamma"),
        (["--snr_offset", "0.5", "--prediction_type", "epsilon"], "needs --prediction_type v_prediction"),
        (["--timestep_bias_multiplier", "-1"], "--timestep_bias_multiplier: must be a positive number"),
        (["--timestep_bias_strategy", "range", "--timestep_bias_begin", "500", "--timestep_bias_end", "100"],
         "0 <= begin < end"),
        (["--evaluation_seeds", "0", "1"], "--evaluation_seeds needs --evaluator_checkpoint"),
    ],
)
def test_bad_objective_flags_are_refused_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def v_prediction_run(tiny_iclevr_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("v") / "run"
    launch_training(
        "--model_config_name_or_path", "tiny", "--resolution", "32", "--train_batch_size", "8",
        "--max_train_steps", "3", "--lr_warmup_steps", "1", "--validation_steps", "100",
        "--validation_inference_steps", "2",  # v-prediction and Min-SNR 5 are the defaults
        "--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "2",
        "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir),
    )  # fmt: skip
    return output_dir


def test_by_default_the_saved_scheduler_and_every_sampler_built_from_it_predict_v(v_prediction_run):
    from training.pipeline_loading import load_pipeline
    from training.samplers import SAMPLERS, set_sampler

    config = json.loads((v_prediction_run / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    pipeline = load_pipeline(str(v_prediction_run))
    for name in SAMPLERS:
        set_sampler(pipeline, name)
        assert pipeline.scheduler.config.prediction_type == "v_prediction", name
    training_args = json.loads((v_prediction_run / "training_args.json").read_text())
    assert training_args["snr_gamma"] == 5.0 and training_args["timestep_bias_strategy"] == "later"


def _tiny_run(tiny_iclevr_dir: Path, output_dir: Path, *flags: str) -> dict[str, torch.Tensor]:
    """Two steps of the tiny model from the same seed and batches; the trained (not EMA) weights."""
    train_in_process(
        "--model_config_name_or_path", "tiny", "--resolution", "8", "--train_batch_size", "4", "--lr_warmup_steps",
        "0", "--max_train_steps", "2", "--validation_steps", "100", "--validation_inference_steps", "1",
        "--report_to", "none", "--train_data_dir", str(tiny_iclevr_dir), "--output_dir", str(output_dir), *flags,
    )  # fmt: skip
    return load_file(output_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_an_snr_offset_reaches_the_loss_the_training_steps_follow(tiny_iclevr_dir, tmp_path):
    paper = _tiny_run(tiny_iclevr_dir, tmp_path / "paper")
    again = _tiny_run(tiny_iclevr_dir, tmp_path / "paper-again")
    offset = _tiny_run(tiny_iclevr_dir, tmp_path / "offset", "--snr_offset", "0.5")
    assert all(torch.equal(paper[name], again[name]) for name in paper)  # so a difference is the offset's
    assert not all(torch.equal(paper[name], offset[name]) for name in paper)
    assert json.loads((tmp_path / "offset" / "training_args.json").read_text())["snr_offset"] == 0.5
