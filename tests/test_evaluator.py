"""The evaluator: torchvision-compatible ResNet-18 parameter names, safe checkpoint loading, the course's metric."""

import json
import pickle

import pytest
import torch

from conftest import import_script
from pipeline.vocabulary import DEFAULT_LABELS
from training import bf16_support
from training.evaluator import (
    EvaluatorError,
    build_evaluator,
    classify,
    evaluation_metrics,
    load_evaluator,
    save_evaluator,
    top_k_accuracy,
)

# torchvision.models.resnet18() with fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid()), written out by hand:
# the course's checkpoint.pth holds exactly these tensors.
TORCHVISION_RESNET18_KEYS = [
    ("conv1.weight", (64, 3, 7, 7)),
    ("bn1.weight", (64,)),
    ("bn1.bias", (64,)),
    ("bn1.running_mean", (64,)),
    ("bn1.running_var", (64,)),
    ("bn1.num_batches_tracked", ()),
    ("layer1.0.conv1.weight", (64, 64, 3, 3)),
    ("layer1.0.bn1.weight", (64,)),
    ("layer1.0.bn1.bias", (64,)),
    ("layer1.0.bn1.running_mean", (64,)),
    ("layer1.0.bn1.running_var", (64,)),
    ("layer1.0.bn1.num_batches_tracked", ()),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)),
    ("layer1.0.bn2.weight", (64,)),
    ("layer1.0.bn2.bias", (64,)),
    ("layer1.0.bn2.running_mean", (64,)),
    ("layer1.0.bn2.running_var", (64,)),
    ("layer1.0.bn2.num_batches_tracked", ()),
    ("layer1.1.conv1.weight", (64, 64, 3, 3)),
    ("layer1.1.bn1.weight", (64,)),
    ("layer1.1.bn1.bias", (64,)),
    ("layer1.1.bn1.running_mean", (64,)),
    ("layer1.1.bn1.running_var", (64,)),
    ("layer1.1.bn1.num_batches_tracked", ()),
    ("layer1.1.conv2.weight", (64, 64, 3, 3)),
    ("layer1.1.bn2.weight", (64,)),
    ("layer1.1.bn2.bias", (64,)),
    ("layer1.1.bn2.running_mean", (64,)),
    ("layer1.1.bn2.running_var", (64,)),
    ("layer1.1.bn2.num_batches_tracked", ()),
    ("layer2.0.conv1.weight", (128, 64, 3, 3)),
    ("layer2.0.bn1.weight", (128,)),
    ("layer2.0.bn1.bias", (128,)),
    ("layer2.0.bn1.running_mean", (128,)),
    ("layer2.0.bn1.running_var", (128,)),
    ("layer2.0.bn1.num_batches_tracked", ()),
    ("layer2.0.conv2.weight", (128, 128, 3, 3)),
    ("layer2.0.bn2.weight", (128,)),
    ("layer2.0.bn2.bias", (128,)),
    ("layer2.0.bn2.running_mean", (128,)),
    ("layer2.0.bn2.running_var", (128,)),
    ("layer2.0.bn2.num_batches_tracked", ()),
    ("layer2.0.downsample.0.weight", (128, 64, 1, 1)),
    ("layer2.0.downsample.1.weight", (128,)),
    ("layer2.0.downsample.1.bias", (128,)),
    ("layer2.0.downsample.1.running_mean", (128,)),
    ("layer2.0.downsample.1.running_var", (128,)),
    ("layer2.0.downsample.1.num_batches_tracked", ()),
    ("layer2.1.conv1.weight", (128, 128, 3, 3)),
    ("layer2.1.bn1.weight", (128,)),
    ("layer2.1.bn1.bias", (128,)),
    ("layer2.1.bn1.running_mean", (128,)),
    ("layer2.1.bn1.running_var", (128,)),
    ("layer2.1.bn1.num_batches_tracked", ()),
    ("layer2.1.conv2.weight", (128, 128, 3, 3)),
    ("layer2.1.bn2.weight", (128,)),
    ("layer2.1.bn2.bias", (128,)),
    ("layer2.1.bn2.running_mean", (128,)),
    ("layer2.1.bn2.running_var", (128,)),
    ("layer2.1.bn2.num_batches_tracked", ()),
    ("layer3.0.conv1.weight", (256, 128, 3, 3)),
    ("layer3.0.bn1.weight", (256,)),
    ("layer3.0.bn1.bias", (256,)),
    ("layer3.0.bn1.running_mean", (256,)),
    ("layer3.0.bn1.running_var", (256,)),
    ("layer3.0.bn1.num_batches_tracked", ()),
    ("layer3.0.conv2.weight", (256, 256, 3, 3)),
    ("layer3.0.bn2.weight", (256,)),
    ("layer3.0.bn2.bias", (256,)),
    ("layer3.0.bn2.running_mean", (256,)),
    ("layer3.0.bn2.running_var", (256,)),
    ("layer3.0.bn2.num_batches_tracked", ()),
    ("layer3.0.downsample.0.weight", (256, 128, 1, 1)),
    ("layer3.0.downsample.1.weight", (256,)),
    ("layer3.0.downsample.1.bias", (256,)),
    ("layer3.0.downsample.1.running_mean", (256,)),
    ("layer3.0.downsample.1.running_var", (256,)),
    ("layer3.0.downsample.1.num_batches_tracked", ()),
    ("layer3.1.conv1.weight", (256, 256, 3, 3)),
    ("layer3.1.bn1.weight", (256,)),
    ("layer3.1.bn1.bias", (256,)),
    ("layer3.1.bn1.running_mean", (256,)),
    ("layer3.1.bn1.running_var", (256,)),
    ("layer3.1.bn1.num_batches_tracked", ()),
    ("layer3.1.conv2.weight", (256, 256, 3, 3)),
    ("layer3.1.bn2.weight", (256,)),
    ("layer3.1.bn2.bias", (256,)),
    ("layer3.1.bn2.running_mean", (256,)),
    ("layer3.1.bn2.running_var", (256,)),
    ("layer3.1.bn2.num_batches_tracked", ()),
    ("layer4.0.conv1.weight", (512, 256, 3, 3)),
    ("layer4.0.bn1.weight", (512,)),
    ("layer4.0.bn1.bias", (512,)),
    ("layer4.0.bn1.running_mean", (512,)),
    ("layer4.0.bn1.running_var", (512,)),
    ("layer4.0.bn1.num_batches_tracked", ()),
    ("layer4.0.conv2.weight", (512, 512, 3, 3)),
    ("layer4.0.bn2.weight", (512,)),
    ("layer4.0.bn2.bias", (512,)),
    ("layer4.0.bn2.running_mean", (512,)),
    ("layer4.0.bn2.running_var", (512,)),
    ("layer4.0.bn2.num_batches_tracked", ()),
    ("layer4.0.downsample.0.weight", (512, 256, 1, 1)),
    ("layer4.0.downsample.1.weight", (512,)),
    ("layer4.0.downsample.1.bias", (512,)),
    ("layer4.0.downsample.1.running_mean", (512,)),
    ("layer4.0.downsample.1.running_var", (512,)),
    ("layer4.0.downsample.1.num_batches_tracked", ()),
    ("layer4.1.conv1.weight", (512, 512, 3, 3)),
    ("layer4.1.bn1.weight", (512,)),
    ("layer4.1.bn1.bias", (512,)),
    ("layer4.1.bn1.running_mean", (512,)),
    ("layer4.1.bn1.running_var", (512,)),
    ("layer4.1.bn1.num_batches_tracked", ()),
    ("layer4.1.conv2.weight", (512, 512, 3, 3)),
    ("layer4.1.bn2.weight", (512,)),
    ("layer4.1.bn2.bias", (512,)),
    ("layer4.1.bn2.running_mean", (512,)),
    ("layer4.1.bn2.running_var", (512,)),
    ("layer4.1.bn2.num_batches_tracked", ()),
    ("fc.0.weight", (24, 512)),
    ("fc.0.bias", (24,)),
]


UNPICKLED = []


class NotAStateDict:
    """Pickled by a test; loading must refuse it rather than run its unpickling code."""

    def __init__(self):
        self.payload = "anything"

    def __setstate__(self, state):
        UNPICKLED.append(state)


def _scored(rows: list[dict[int, float]], num_labels: int = 24) -> torch.Tensor:
    probs = torch.zeros(len(rows), num_labels)
    for i, row in enumerate(rows):
        for index, value in row.items():
            probs[i, index] = value
    return probs


def _multi_hot(rows: list[list[int]], num_labels: int = 24) -> torch.Tensor:
    targets = torch.zeros(len(rows), num_labels)
    for i, row in enumerate(rows):
        targets[i, row] = 1.0
    return targets


@pytest.fixture(scope="module")
def trained_looking_model() -> torch.nn.Module:
    """An evaluator whose weights and batch-norm statistics are all non-trivial, in eval mode."""
    torch.manual_seed(0)
    model = build_evaluator()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.1 + (0.5 if "running_var" in name else 0.0))
    return model.eval()


def test_state_dict_matches_torchvision_resnet18_keys_order_and_shapes():
    state_dict = build_evaluator().state_dict()
    assert len(TORCHVISION_RESNET18_KEYS) == 122
    assert [(key, tuple(value.shape)) for key, value in state_dict.items()] == TORCHVISION_RESNET18_KEYS


def test_saved_file_holds_only_the_model_state_dict(tmp_path, trained_looking_model):
    path = save_evaluator(trained_looking_model, tmp_path / "checkpoint.pth")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert list(checkpoint) == ["model"]
    assert list(checkpoint["model"]) == [key for key, _ in TORCHVISION_RESNET18_KEYS]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary file left behind


def test_saved_checkpoint_loads_strictly_and_gives_identical_outputs(tmp_path, trained_looking_model):
    path = save_evaluator(trained_looking_model, tmp_path / "checkpoint.pth")
    loaded = load_evaluator(path)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(images), trained_looking_model(images))
    assert not loaded.training


def test_plain_torchvision_style_state_dict_loads_with_strict_true(tmp_path, trained_looking_model):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": trained_looking_model.state_dict()}, path)
    build_evaluator().load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    assert load_evaluator(path).state_dict().keys() == trained_looking_model.state_dict().keys()


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(EvaluatorError, match="does not exist"):
        load_evaluator(tmp_path / "nope.pth")


def test_pickled_custom_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        pickle.dump({"model": NotAStateDict()}, file, protocol=2)
    with pytest.raises(EvaluatorError, match="cannot be read safely") as error:
        load_evaluator(path)
    assert "\n" not in str(error.value)
    assert UNPICKLED == []


def test_torch_saved_custom_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(NotAStateDict(), path)
    with pytest.raises(EvaluatorError, match="cannot be read safely"):
        load_evaluator(path)


def test_checkpoint_without_model_entry_is_refused(tmp_path, trained_looking_model):
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": trained_looking_model.state_dict()}, path)
    with pytest.raises(EvaluatorError, match="not a dict with a 'model' entry"):
        load_evaluator(path)


def test_model_entry_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": [torch.zeros(3)]}, path)
    with pytest.raises(EvaluatorError, match="not a state dict"):
        load_evaluator(path)


def test_missing_key_is_refused(tmp_path, trained_looking_model):
    state_dict = dict(trained_looking_model.state_dict())
    del state_dict["layer2.0.downsample.0.weight"]
    torch.save({"model": state_dict}, tmp_path / "checkpoint.pth")
    with pytest.raises(EvaluatorError, match="1 missing .*layer2.0.downsample.0.weight") as error:
        load_evaluator(tmp_path / "checkpoint.pth")
    assert "\n" not in str(error.value)


def test_extra_key_is_refused(tmp_path, trained_looking_model):
    state_dict = dict(trained_looking_model.state_dict(), **{"fc.1.weight": torch.zeros(24)})
    torch.save({"model": state_dict}, tmp_path / "checkpoint.pth")
    with pytest.raises(EvaluatorError, match="1 unexpected .*fc.1.weight"):
        load_evaluator(tmp_path / "checkpoint.pth")


def test_wrong_shape_is_refused(tmp_path, trained_looking_model):
    state_dict = dict(trained_looking_model.state_dict(), **{"conv1.weight": torch.zeros(64, 1, 7, 7)})
    torch.save({"model": state_dict}, tmp_path / "checkpoint.pth")
    with pytest.raises(EvaluatorError, match=r"conv1.weight has shape \(64, 1, 7, 7\)"):
        load_evaluator(tmp_path / "checkpoint.pth")


@pytest.mark.parametrize("size", [32, 128])
def test_other_resolutions_are_resized_to_64(trained_looking_model, size):
    images = torch.rand(2, 3, size, size) * 2 - 1
    resized = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = trained_looking_model(images)
        assert probs.shape == (2, 24)
        assert torch.allclose(probs, trained_looking_model(resized))
    assert torch.all((probs >= 0) & (probs <= 1))


def test_images_without_three_channels_are_refused(trained_looking_model):
    with pytest.raises(EvaluatorError, match=r"\(batch, 3, height, width\)"):
        trained_looking_model(torch.zeros(2, 1, 64, 64))


def test_classify_in_batches_matches_one_forward_pass(trained_looking_model):
    images = torch.rand(5, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = trained_looking_model(images)
    assert torch.allclose(classify(trained_looking_model, images, batch_size=2), expected)


def test_top_k_accuracy_with_one_label_hit_and_miss():
    targets = _multi_hot([[0], [0]])
    probs = _scored([{0: 0.9, 1: 0.1}, {0: 0.2, 1: 0.8}])
    assert top_k_accuracy(probs, targets) == 1 / 2


def test_top_k_accuracy_with_two_labels_partial_hit():
    # true {1, 2}; the two highest scores are labels 2 and 5 -> one hit out of two.
    assert top_k_accuracy(_scored([{2: 0.9, 5: 0.8, 1: 0.7}]), _multi_hot([[1, 2]])) == 1 / 2


def test_top_k_accuracy_with_three_labels_counts_hits_over_all_true_labels():
    targets = _multi_hot([[3, 4, 5], [6, 7, 8]])
    # row 0: top-3 {3, 4, 5} -> 3 hits; row 1: top-3 {6, 10, 11} -> 1 hit; 4 of 6 true labels found.
    probs = _scored([{3: 0.7, 4: 0.6, 5: 0.5, 9: 0.4}, {6: 0.9, 10: 0.8, 11: 0.7, 7: 0.6, 8: 0.5}])
    assert top_k_accuracy(probs, targets) == 4 / 6


def test_top_k_accuracy_uses_only_k_predictions_even_if_more_are_confident():
    # every label above 0.5 but k = 1: only the single best counts.
    probs = torch.full((1, 24), 0.9)
    probs[0, 4] = 0.95
    assert top_k_accuracy(probs, _multi_hot([[3]])) == 0.0
    assert top_k_accuracy(probs, _multi_hot([[4]])) == 1.0


def test_top_k_accuracy_breaks_exact_ties_towards_the_lower_label_index():
    # labels 1, 2, 3 tie at 0.5 behind label 0; k = 2 takes label 0 and then label 1.
    probs = _scored([{0: 0.9, 1: 0.5, 2: 0.5, 3: 0.5}] * 2)
    assert top_k_accuracy(probs[:1], _multi_hot([[0, 1]])) == 1.0
    assert top_k_accuracy(probs[1:], _multi_hot([[0, 3]])) == 1 / 2


def test_top_k_accuracy_refuses_rows_without_labels_and_non_multi_hot_targets():
    with pytest.raises(EvaluatorError, match="row 1 has no labels"):
        top_k_accuracy(torch.rand(2, 24), _multi_hot([[0], []]))
    with pytest.raises(EvaluatorError, match="multi-hot"):
        top_k_accuracy(torch.rand(1, 24), torch.full((1, 24), 0.5))
    with pytest.raises(EvaluatorError, match="same shape"):
        top_k_accuracy(torch.rand(1, 24), torch.ones(1, 23))


def test_evaluation_metrics_on_a_hand_worked_batch():
    targets = _multi_hot([[0], [1, 2], [3, 4, 5], [6, 7, 8]])
    probs = _scored([
        {0: 0.9},                                       # 1 of 1, exact
        {2: 0.9, 5: 0.8, 1: 0.7},                       # 1 of 2
        {3: 0.7, 4: 0.6, 5: 0.5},                       # 3 of 3, exact
        {6: 0.9, 10: 0.8, 11: 0.7, 7: 0.6, 8: 0.5},     # 1 of 3
    ])
    metrics = evaluation_metrics(probs, targets, DEFAULT_LABELS)
    assert metrics["accuracy"] == 6 / 9
    assert metrics["exact_match"] == 2 / 4
    assert metrics["num_images"] == 4
    recall = metrics["per_label_recall"]
    assert [recall[DEFAULT_LABELS[i]] for i in range(9)] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert all(recall[name] is None for name in DEFAULT_LABELS[9:])
    assert list(recall) == list(DEFAULT_LABELS)


# ------------------------------------------------------------------------------- scripts/train_evaluator.py


@pytest.fixture(scope="module")
def train_script():
    return import_script("train_evaluator")


def test_scene_split_keeps_the_three_images_of_a_scene_together(train_script, tiny_iclevr_dir):
    names = list(json.loads((tiny_iclevr_dir / "train.json").read_text()))
    train, validation = train_script.scene_split(str(tiny_iclevr_dir), len(names), 0.25, seed=0)
    assert sorted(train + validation) == list(range(len(names)))
    scene = lambda i: names[i].rsplit("_", 1)[0]  # noqa: E731
    assert {scene(i) for i in train}.isdisjoint({scene(i) for i in validation})
    assert len(validation) == 3 * 3  # 25 % of 12 scenes


def test_augmentation_never_changes_colours(train_script):
    # A flat image of one colour stays that colour (up to the faint noise) whatever the shift, zoom and flip.
    colour = torch.tensor([0.6, -0.7, -0.7])[None, :, None, None]
    images = colour.expand(8, 3, 64, 64).contiguous()
    augmented = train_script.augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape
    assert torch.allclose(augmented.mean(dim=(2, 3)), colour.flatten().expand(8, 3), atol=0.01)


def test_training_script_saves_a_loadable_checkpoint_and_metrics(train_script, tiny_iclevr_dir, tmp_path, capsys):
    output = tmp_path / "evaluator" / "checkpoint.pth"
    report = train_script.main([
        "--train_data_dir", str(tiny_iclevr_dir), "--output_path", str(output),
        "--epochs", "1", "--batch_size", "16", "--validation_fraction", "0.25",
    ])
    model = load_evaluator(output)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 24)
    saved = json.loads((output.parent / "checkpoint_metrics.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["num_images"] == 9
    assert saved["low_resolution"]["resolution"] == 32 and saved["low_resolution"]["num_images"] == 9
    assert saved["reached_target"] is False  # one epoch on 27 images: far from 99.5 %
    assert "WARNING" in capsys.readouterr().err


def test_bf16_on_a_cpu_without_native_bfloat16_trains_the_evaluator_in_float32_and_says_so(
    train_script, tiny_iclevr_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(bf16_support, "cpu_has_native_bf16", lambda: False)
    output = tmp_path / "checkpoint.pth"
    report = train_script.main([
        "--train_data_dir", str(tiny_iclevr_dir), "--output_path", str(output),
        "--epochs", "1", "--batch_size", "16", "--validation_fraction", "0.25", "--mixed_precision", "bf16",
    ])
    assert report["mixed_precision"] == "no"
    assert "WARNING: --mixed_precision bf16: this CPU has no native bfloat16" in capsys.readouterr().out


def test_training_images_are_shown_natively_and_as_32_pixel_renders_upsampled(train_script):
    model = build_evaluator()
    native = torch.rand(64, 3, 64, 64) * 2 - 1
    low = torch.rand(64, 3, 32, 32) * 2 - 1
    batch = {"pixel_values": native, "pixel_values_low": low}
    mixed = train_script.mix_resolutions(model, batch, 0.5, torch.Generator().manual_seed(0))
    from_low = [torch.equal(image, upsampled) for image, upsampled in zip(mixed, model.prepare(low))]
    from_native = [torch.equal(image, original) for image, original in zip(mixed, native)]
    assert all(a != b for a, b in zip(from_low, from_native))  # every image is exactly one of the two
    assert 20 < sum(from_low) < 44
    assert torch.equal(train_script.mix_resolutions(model, batch, 0.0, torch.Generator()), native)
