"""ConditionalUNet2DModel and the size presets."""

import json

import pytest
import torch
from accelerate import init_empty_weights
from diffusers.training_utils import EMAModel

from pipeline.conditional_unet import ConditionalUNet2DModel
from training.model_presets import PRESETS, create_model, load_model_config

SIZE = 16


@pytest.fixture(scope="module")
def model() -> ConditionalUNet2DModel:
    torch.manual_seed(0)
    return create_model("tiny", sample_size=SIZE).eval()


def _inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    timestep = torch.tensor([10, 700][:batch])
    return sample, timestep


def _labels(*index_lists: list[int]) -> torch.Tensor:
    labels = torch.zeros(len(index_lists), 24)
    for row, indices in enumerate(index_lists):
        labels[row, indices] = 1.0
    return labels


def _public_config(model: ConditionalUNet2DModel) -> dict:
    # Through JSON tuples come back as lists, so compare both configs in their JSON form, without bookkeeping keys.
    return {key: value for key, value in json.loads(model.to_json_string()).items() if not key.startswith("_")}


def test_forward_returns_a_sample_shaped_like_the_input(model):
    sample, timestep = _inputs()
    with torch.no_grad():
        output = model(sample, timestep, _labels([0], [3, 9]))
    assert output.sample.shape == sample.shape


def test_save_and_load_round_trip_gives_identical_outputs_and_config(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = ConditionalUNet2DModel.from_pretrained(tmp_path).eval()
    sample, timestep = _inputs()
    labels = _labels([0], [3, 9])
    with torch.no_grad():
        assert torch.equal(model(sample, timestep, labels).sample, loaded(sample, timestep, labels).sample)
    assert _public_config(loaded) == _public_config(model)


def test_different_labels_give_different_outputs(model):
    sample, timestep = _inputs(batch=1)
    with torch.no_grad():
        red_sphere = model(sample, timestep, _labels([9])).sample
        cyan_cube = model(sample, timestep, _labels([6])).sample
    assert not torch.allclose(red_sphere, cyan_cube)


def test_all_zero_labels_are_the_unconditional_input(model):
    sample, timestep = _inputs()
    with torch.no_grad():
        unconditional = model(sample, timestep, torch.zeros(2, 24)).sample
        conditional = model(sample, timestep, _labels([1], [2])).sample
    assert torch.isfinite(unconditional).all()
    assert not torch.allclose(unconditional, conditional)


def test_labels_with_the_wrong_width_raise_a_clear_error(model):
    sample, timestep = _inputs()
    with pytest.raises(ValueError, match=r"shape \(batch, 24\)"):
        model(sample, timestep, torch.zeros(2, 23))


def test_a_training_step_reaches_the_label_projection():
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=32)
    sample = torch.randn(4, 3, 32, 32)
    prediction = model(sample, torch.randint(0, 1000, (4,)), _labels([0], [1, 2], [5], [7, 8, 9])).sample
    torch.nn.functional.mse_loss(prediction, torch.randn_like(sample)).backward()
    assert model.label_projection.weight.grad.abs().sum() > 0


def test_each_label_embedding_starts_at_the_configured_norm(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "label_embedding_norm": 8}))
    torch.manual_seed(0)
    model = create_model(str(path), sample_size=32)
    one_label_each = model.label_projection.weight.detach().T  # (labels, width): label i's embedding minus the bias
    assert one_label_each.norm(dim=1) == pytest.approx([8.0] * 24, rel=1e-5)
    assert model.config.label_embedding_norm == 8


def test_a_label_embedding_norm_given_to_create_model_replaces_the_configs(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "label_embedding_norm": 8}))
    torch.manual_seed(0)
    model = create_model(str(path), sample_size=32, label_embedding_norm=5)
    assert model.label_projection.weight.detach().norm(dim=0) == pytest.approx([5.0] * 24, rel=1e-5)
    assert model.config.label_embedding_norm == 5


def test_by_default_the_label_projection_keeps_the_linear_layers_own_initialisation():
    torch.manual_seed(0)
    weight = create_model("tiny", sample_size=32).label_projection.weight
    # nn.Linear draws uniformly within +-1/sqrt(in_features); a norm-8 column (width 128) lies far outside.
    assert weight.abs().max() <= 24**-0.5
    assert weight.norm(dim=0).max() < 2.0


def test_a_non_positive_label_embedding_norm_is_a_one_line_error(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "label_embedding_norm": 0}))
    with pytest.raises(ValueError, match=r"label_embedding_norm must be a positive number .* got 0$"):
        create_model(str(path), sample_size=32)


def test_time_embedding_dim_sets_the_width_of_the_timestep_and_label_embedding(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "time_embedding_dim": 96}))
    torch.manual_seed(0)
    model = create_model(str(path), sample_size=SIZE)
    assert model.unet.time_embedding.linear_2.out_features == 96
    assert model.label_projection.out_features == 96
    # Every ResNet block maps the 96-wide embedding to its own scale and shift.
    assert {block.time_emb_proj.in_features for block in _resnet_blocks(model)} == {96}
    sample, timestep = _inputs()
    with torch.no_grad():
        assert model(sample, timestep, _labels([0], [1])).sample.shape == sample.shape


def test_a_model_with_a_wider_time_embedding_saves_and_loads_with_it(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "time_embedding_dim": 96}))
    model = create_model(str(path), sample_size=SIZE).eval()
    model.save_pretrained(tmp_path / "saved")
    loaded = ConditionalUNet2DModel.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config.time_embedding_dim == 96 and loaded.label_projection.out_features == 96
    sample, timestep = _inputs()
    with torch.no_grad():
        labels = _labels([3], [4])
        assert torch.equal(loaded(sample, timestep, labels).sample, model(sample, timestep, labels).sample)


def test_by_default_the_time_embedding_is_four_times_the_first_levels_channels():
    model = create_model("tiny", sample_size=SIZE)
    assert model.label_projection.out_features == 4 * PRESETS["tiny"]["block_out_channels"][0]


def test_the_cpu_preset_embeds_timesteps_and_labels_as_wide_as_the_gpu_preset():
    with init_empty_weights():
        cpu = ConditionalUNet2DModel(**load_model_config("cpu", sample_size=32))
        gpu = ConditionalUNet2DModel(**load_model_config("gpu", sample_size=64))
    assert cpu.label_projection.out_features == gpu.label_projection.out_features == 512


@pytest.mark.parametrize("width", [0, -128, 12.5, True])
def test_a_time_embedding_dim_that_is_not_a_positive_integer_is_a_one_line_error(tmp_path, width):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({**PRESETS["tiny"], "time_embedding_dim": width}))
    with pytest.raises(ValueError, match=r"time_embedding_dim must be a positive integer .* got "):
        create_model(str(path), sample_size=SIZE)


def _resnet_blocks(model: ConditionalUNet2DModel) -> list[torch.nn.Module]:
    from diffusers.models.resnet import ResnetBlock2D

    return [m for m in model.modules() if isinstance(m, ResnetBlock2D)]


def _residual_branch_ends(model: ConditionalUNet2DModel) -> list[torch.nn.Module]:
    from diffusers.models.attention_processor import Attention

    ends = [block.conv2 for block in _resnet_blocks(model)]
    ends += [m.to_out[0] for m in model.modules() if isinstance(m, Attention)]
    return ends + [model.unet.conv_out]


def test_zero_init_residual_starts_every_residual_branch_and_the_output_at_zero():
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=SIZE, zero_init_residual=True)
    ends = _residual_branch_ends(model)

    assert len(ends) == 13  # tiny: 8 ResNet blocks, 4 attention layers, the output convolution
    assert all(not end.weight.any() and not end.bias.any() for end in ends)
    assert model.config.zero_init_residual is True
    sample, timestep = _inputs()
    assert not model(sample, timestep, _labels([0], [1, 2])).sample.any()


def test_a_zero_initialised_model_learns_and_its_labels_change_the_output():
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=SIZE, zero_init_residual=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sample, timestep = _inputs()
    for _ in range(3):  # the output convolution first, then the branches behind it
        loss = (model(sample, timestep, _labels([0], [1, 2])).sample - sample).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    assert all(end.weight.any() for end in _residual_branch_ends(model))
    with torch.no_grad():
        one, other = (model(sample[:1], timestep[:1], _labels(labels)).sample for labels in ([0], [5]))
    assert not torch.equal(one, other)


def test_a_zero_started_model_loads_with_its_trained_weights_not_zeros(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=SIZE, zero_init_residual=True)
    with torch.no_grad():
        for end in _residual_branch_ends(model):  # stands in for training
            end.weight.normal_()
    model.save_pretrained(tmp_path)

    loaded = ConditionalUNet2DModel.from_pretrained(tmp_path)

    assert loaded.config.zero_init_residual is True
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_by_default_the_residual_branches_keep_diffusers_initialisation():
    torch.manual_seed(0)
    model = create_model("tiny", sample_size=SIZE)
    assert model.config.zero_init_residual is False
    assert all(end.weight.any() for end in _residual_branch_ends(model))


def test_bf16_weights_accept_float32_labels(model, tmp_path):
    model.save_pretrained(tmp_path)
    bf16_model = ConditionalUNet2DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    sample, timestep = _inputs()
    with torch.no_grad():
        output = bf16_model(sample.bfloat16(), timestep, _labels([0], [1])).sample
    assert output.dtype == torch.bfloat16


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_model_config(name):
    config = load_model_config(name, sample_size=64)
    assert config["sample_size"] == 64
    with init_empty_weights():  # no memory or time spent on weights
        model = ConditionalUNet2DModel(**config)
    assert model.config.block_out_channels == tuple(PRESETS[name]["block_out_channels"])


def test_unknown_preset_error_names_the_closest_preset_and_lists_all():
    with pytest.raises(ValueError, match="did you mean 'tiny'") as error:
        load_model_config("tinny", sample_size=64)
    assert all(name in str(error.value) for name in PRESETS)


def test_a_saved_config_json_file_or_folder_is_accepted(model, tmp_path):
    model.save_config(tmp_path)
    for path in (tmp_path, tmp_path / "config.json"):
        config = load_model_config(str(path), sample_size=32)
        assert config["sample_size"] == 32
        assert list(config["block_out_channels"]) == list(PRESETS["tiny"]["block_out_channels"])
        assert not any(key.startswith("_") for key in config)


def test_an_ema_model_folder_is_accepted_as_a_config(model, tmp_path):
    EMAModel(model.parameters(), model_cls=ConditionalUNet2DModel, model_config=model.config).save_pretrained(tmp_path)
    config = load_model_config(str(tmp_path), sample_size=SIZE)
    assert "decay" not in config and list(config["block_out_channels"]) == [32, 64]


def test_a_config_json_with_an_unknown_key_names_the_closest_argument(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"block_out_channel": [32, 64]}))
    with pytest.raises(ValueError, match="did you mean 'block_out_channels'"):
        load_model_config(str(path), sample_size=32)


def test_a_resolution_the_unet_cannot_halve_is_rejected():
    with pytest.raises(ValueError, match="multiple of 8"):
        load_model_config("cpu", sample_size=36)


def test_create_model_uses_the_preset_and_label_count():
    model = create_model("tiny", sample_size=32, num_labels=5)
    assert model.config.sample_size == 32
    assert model.label_projection.in_features == 5
