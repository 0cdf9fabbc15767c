"""The i-CLEVR evaluator: a ResNet-18 multi-label classifier and the course's top-k accuracy.

The module layout and parameter names follow torchvision's `resnet18` with
`fc = nn.Sequential(nn.Linear(512, 24), nn.Sigmoid())`, so the course's `checkpoint.pth` ({"model": state_dict})
loads with `strict=True`. It is written here with plain torch because torchvision is not a dependency.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.errors import UserError

EVALUATOR_RESOLUTION = 64
NUM_LABELS = 24
# The training budget that reaches the 99.5 % held-out target at 64x64 and at 32->64 (scripts/train_evaluator.py's
# defaults; benchmarks/bench_iclevr.py trains the same judge).
EVALUATOR_EPOCHS = 8
EVALUATOR_SYNTHETIC_SCENES = 4000
EVALUATOR_VALIDATION_SCENES = 600


class EvaluatorError(UserError, ValueError):
    """A checkpoint, image batch or label matrix the evaluator cannot use."""


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's `BasicBlock` names)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        # The shortcut needs a 1x1 projection whenever the block changes resolution or width.
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Evaluator(nn.Module):
    """ResNet-18 over (B, 3, H, W) images in [-1, 1] -> (B, num_labels) sigmoid probabilities.

    Images that are not 64x64 are resized to 64x64 first (bilinear, antialiased), the resolution the course's
    evaluator was trained at.
    """

    def __init__(self, num_labels: int = NUM_LABELS):
        super().__init__()
        if num_labels < 1:
            raise EvaluatorError(f"num_labels must be at least 1, got {num_labels}")
        self.num_labels = num_labels
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, stride=2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, stride=2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, stride=2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(512, num_labels), nn.Sigmoid())
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Starting each residual branch at zero makes a fresh network an identity stack, which trains faster.
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Checks the batch shape and resizes it to 64x64."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise EvaluatorError(f"the evaluator takes a (batch, 3, height, width) tensor in [-1, 1], got {shape}")
        if images.shape[-2:] != (EVALUATOR_RESOLUTION, EVALUATOR_RESOLUTION):
            images = F.interpolate(
                images.float(), size=(EVALUATOR_RESOLUTION, EVALUATOR_RESOLUTION), mode="bilinear",
                align_corners=False, antialias=True,
            )
        return images

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores; training uses these with BCE-with-logits for numerical stability."""
        x = self.prepare(images)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc[0](x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc[1](self.logits(images))


def build_evaluator(num_labels: int = NUM_LABELS) -> ResNet18Evaluator:
    """A freshly initialised evaluator."""
    return ResNet18Evaluator(num_labels)


def load_evaluator(path: str | Path, device: str | torch.device = "cpu") -> ResNet18Evaluator:
    """Loads a `{"model": state_dict}` checkpoint (the course's `checkpoint.pth` format), in eval mode.

    `weights_only=True` means the file can hold tensors and plain containers only; a pickle of anything else is
    refused instead of executed.
    """
    path = Path(path)
    expected = "a torch file holding {'model': state_dict} of a ResNet-18 evaluator (like the course's checkpoint.pth)"
    if not path.is_file():
        raise EvaluatorError(f"evaluator checkpoint {path} does not exist; expected {expected}")
    try:
        # Read onto the CPU: map_location refuses some device names (e.g. "cpu:0" on multi-CPU runs).
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise EvaluatorError(f"{path} cannot be read safely ({_load_failure(error)}); expected {expected}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        found = sorted(map(str, checkpoint))[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise EvaluatorError(f"{path} holds {found}, not a dict with a 'model' entry; expected {expected}")
    state_dict = checkpoint["model"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise EvaluatorError(
            f"{path}: checkpoint['model'] is a {type(state_dict).__name__} that is not a state dict "
            f"(parameter name -> tensor); expected {expected}"
        )
    # The head's width follows the checkpoint, so evaluators for other vocabularies load too.
    head = state_dict.get("fc.0.weight")
    num_labels = head.shape[0] if head is not None and head.ndim == 2 else NUM_LABELS
    model = build_evaluator(num_labels)
    _check_state_dict(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def _load_failure(error: Exception) -> str:
    """A short reason for a refused torch.load (torch's own message is many lines and suggests weights_only=False)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found:
        return f"it pickles the Python object {found.group(1)}, and only tensors and plain containers are loaded"
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    return "it is not a torch checkpoint of tensors and plain containers"


def _check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """One-line errors for missing, unexpected or mis-shaped parameters (load_state_dict's are many lines)."""
    reference = model.state_dict()
    missing = [key for key in reference if key not in state_dict]
    unexpected = [key for key in state_dict if key not in reference]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise EvaluatorError(
            f"{path}: the state dict does not match torchvision's resnet18 with fc=Sequential(Linear, Sigmoid): "
            f"{'; '.join(parts)} keys"
        )
    for key, tensor in reference.items():
        if state_dict[key].shape != tensor.shape:
            raise EvaluatorError(
                f"{path}: {key} has shape {tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}"
            )


def save_evaluator(model: nn.Module, path: str | Path) -> Path:
    """Writes exactly `{"model": state_dict}` (CPU tensors), atomically: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save({"model": state_dict}, file)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Probabilities (N, num_labels) on the CPU for (N, 3, H, W) images in [-1, 1], `batch_size` at a time."""
    if batch_size < 1:
        raise EvaluatorError(f"batch_size must be at least 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise EvaluatorError(f"classify takes a (batch, 3, height, width) tensor in [-1, 1], got {shape}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        outputs = [model(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, getattr(model, "num_labels", NUM_LABELS))


def _check_scores(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs).detach().float().cpu()
    targets = torch.as_tensor(targets).detach().float().cpu()
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise EvaluatorError(
            f"probs and targets must both be (batch, labels) of the same shape, got {tuple(probs.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if probs.shape[0] == 0:
        raise EvaluatorError("no images given; the accuracy of an empty batch is undefined")
    if not torch.all((targets == 0) | (targets == 1)):
        raise EvaluatorError("targets must be multi-hot: every entry 0 or 1")
    empty = (targets.sum(dim=1) == 0).nonzero().flatten()
    if len(empty):
        raise EvaluatorError(f"target row {empty[0].item()} has no labels; every image needs at least one label")
    return probs, targets


def _top_k_hits(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, labels) bool: True where a label is among the image's top-k predictions, k = its number of labels.

    The ranking is torch.topk's (highest probability first); exact ties are broken deterministically towards the
    lower label index, via a stable descending sort. That is the same set torch.topk returns whenever the scores
    are distinct, and unlike torch.topk it does not depend on the device or the kernel.
    """
    order = torch.sort(probs, dim=1, descending=True, stable=True).indices
    ks = targets.sum(dim=1).long()
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(probs.shape[1]).expand_as(order).contiguous())
    return rank < ks[:, None]


def top_k_accuracy(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The course's accuracy: per image take the top-k labels (k = its number of true labels) and count how many
    are true; accuracy = total hits / total true labels over the batch. Ties: see `_top_k_hits`.
    """
    probs, targets = _check_scores(probs, targets)
    hits = (_top_k_hits(probs, targets) & (targets == 1)).sum().item()
    return hits / int(targets.sum().item())


def evaluation_metrics(probs: torch.Tensor, targets: torch.Tensor, label_names: Sequence[str]) -> dict:
    """accuracy (course rule), exact_match (fraction of images whose top-k set is their label set),
    per_label_recall ({name: share of that label's occurrences found in the top-k, or None if it never occurs}),
    num_images.
    """
    probs, targets = _check_scores(probs, targets)
    if len(label_names) != probs.shape[1]:
        raise EvaluatorError(f"{len(label_names)} label names given for {probs.shape[1]} label columns")
    truth = targets == 1
    found = _top_k_hits(probs, targets) & truth
    occurrences = truth.sum(dim=0)
    # Python ints, so hand-worked fractions come out exactly (2 / 3, not float32's nearest value).
    recall = {
        name: found[:, i].sum().item() / occurrences[i].item() if occurrences[i] > 0 else None
        for i, name in enumerate(label_names)
    }
    return {
        "accuracy": found.sum().item() / truth.sum().item(),
        "exact_match": (found.sum(dim=1) == truth.sum(dim=1)).sum().item() / probs.shape[0],
        "per_label_recall": recall,
        "num_images": int(probs.shape[0]),
    }
