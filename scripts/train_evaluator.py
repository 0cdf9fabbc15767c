"""Train the ResNet-18 i-CLEVR evaluator and save it in the course's checkpoint format ({"model": state_dict}).

It is trained the way the course's evaluator was: on scenes of 1 to 5 objects, shown at 64x64 both natively and as
32x32 renders upsampled to 64x64 (what a 32x32 diffusion model hands it), so it judges 32x32 and 64x64 models
alike. Validation reports the held-out accuracy at both.

Default data: the synthetic i-CLEVR rendered with a seed that the diffusion model never trains on (it uses seed 0),
validated on a separate held-out render of another seed.

    python scripts/train_evaluator.py --output_path evaluator/checkpoint.pth
    python scripts/train_evaluator.py --train_data_dir path/to/iclevr --output_path checkpoint.pth

Writes the checkpoint and `<name>_metrics.json` beside it; warns loudly when the held-out top-k accuracy is
below 99.5 % at either resolution.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

import argparse
import contextlib
import json
import re
import time

import torch
import torch.nn.functional as F
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from pipeline.vocabulary import LabelVocabulary
from training.cli import (
    ArgumentParser,
    FlagError,
    check_writable,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from training.cpu_threads import CpuThreads, add_cpu_threads_argument
from training.data import DataError, builtin_synthetic_dir, load_training_set, vocabulary_for
from training.errors import one_line_errors
from training.evaluator import (
    EVALUATOR_EPOCHS,
    EVALUATOR_RESOLUTION,
    EVALUATOR_SYNTHETIC_SCENES,
    EVALUATOR_VALIDATION_SCENES,
    build_evaluator,
    evaluation_metrics,
    save_evaluator,
)
from training.precision import training_mixed_precision
from training.synthetic_iclevr import MAX_OBJECTS_PER_SCENE

TARGET_ACCURACY = 0.995
# Augmentation strengths, in units of half the image side (affine_grid's coordinates): +-2 px shifts at 64x64 and
# a mild zoom. No colour changes of any kind: colour is half of every label.
MAX_SHIFT = 0.06
ZOOM_RANGE = (0.95, 1.1)
PIXEL_NOISE = 0.02
LOW_RESOLUTION = 32  # a 32x32 model's output, which the evaluator upsamples to 64x64 itself


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_path", type=Path, required=True, help="Where to write the checkpoint (.pth).")

    data = parser.add_argument_group("data (default: synthetic i-CLEVR renders that the diffusion model never sees)")
    data.add_argument("--train_data_dir", type=str, default=None, help="An i-CLEVR folder (train.json + images).")
    data.add_argument("--dataset_name", type=str, default=None,
                      help="A Hub data set or save_to_disk folder with an image and a label-list column.")
    data.add_argument("--image_column", type=str, default="image")
    data.add_argument("--label_column", type=str, default="labels")
    data.add_argument("--validation_data_dir", type=str, default=None,
                      help="A held-out i-CLEVR folder to validate on (default: a synthetic render for synthetic "
                           "training, else a split of the training scenes).")
    data.add_argument("--validation_fraction", type=fraction, default=0.1,
                      help="Share of scenes held out when training on your own data without --validation_data_dir.")
    data.add_argument("--synthetic_scenes", type=positive_int, default=EVALUATOR_SYNTHETIC_SCENES,
                      help="Synthetic training scenes (one image per object), shared out over the rendered seeds.")
    data.add_argument("--synthetic_objects_per_scene", type=int, choices=range(1, MAX_OBJECTS_PER_SCENE + 1),
                      default=MAX_OBJECTS_PER_SCENE, metavar=f"1..{MAX_OBJECTS_PER_SCENE}",
                      help="Objects in a full synthetic scene; its images show 1 to that many (the course's: 5).")
    data.add_argument("--synthetic_seed", type=non_negative_int, default=1234,
                      help="Seed of the synthetic training render (the diffusion model's data is seed 0).")
    data.add_argument("--validation_scenes", type=positive_int, default=EVALUATOR_VALIDATION_SCENES,
                      help="Synthetic validation scenes (one image per object).")
    data.add_argument("--validation_seed", type=non_negative_int, default=4321,
                      help="Seed of the synthetic validation render.")
    data.add_argument("--cache_dir", type=str, default=None,
                      help="Where renders and resized images are cached (default: $ICLEVR_CACHE or ~/.cache).")

    optim = parser.add_argument_group("training")
    optim.add_argument("--epochs", type=positive_int, default=EVALUATOR_EPOCHS)
    optim.add_argument("--low_resolution_fraction", type=float, default=0.5,
                       help=f"Share of training images shown as {LOW_RESOLUTION}x{LOW_RESOLUTION} renders upsampled "
                            "to 64x64 (the course evaluator's input); the rest at native 64x64.")
    optim.add_argument("--batch_size", type=positive_int, default=128)
    optim.add_argument("--learning_rate", type=positive_float, default=2e-3,
                       help="Peak AdamW learning rate (cosine decay).")
    optim.add_argument("--weight_decay", type=non_negative_float, default=0.05)
    optim.add_argument("--warmup_steps", type=non_negative_int, default=200)
    optim.add_argument("--mixed_precision", choices=("no", "bf16"), default="no",
                       help="bf16 autocast (on CPU only with native bfloat16, else float32 with a warning); the "
                            "checkpoint is always saved in float32.")
    optim.add_argument("--seed", type=int, default=0, help="Seed of initialisation, shuffling and augmentation.")
    optim.add_argument("--num_workers", type=non_negative_int, default=0, help="DataLoader worker processes.")
    optim.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    add_cpu_threads_argument(optim)
    return parser


class TwoResolutions(Dataset):
    """Each image at the evaluator's 64x64 ("pixel_values") and at 32x32 ("pixel_values_low"), resized from the same
    source, as a model trained at either resolution would draw it."""

    def __init__(self, native: Dataset, low: Dataset):
        if len(native) != len(low):
            raise DataError(f"the 64x64 and 32x32 copies of the data differ in length ({len(native)} vs {len(low)})")
        self.native, self.low = native, low

    def __len__(self) -> int:
        return len(self.native)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.native[index], "pixel_values_low": self.low[index]["pixel_values"]}


def two_resolutions(load) -> TwoResolutions:
    """`load(resolution)` -> data set, at 64x64 and at 32x32 (each resized once into the cache)."""
    return TwoResolutions(load(EVALUATOR_RESOLUTION), load(LOW_RESOLUTION))


def synthetic_set(seed: int, num_scenes: int, objects_per_scene: int, cache_dir: str | None) -> TwoResolutions:
    """`num_scenes` synthetic scenes of render seed `seed`, rendered and resized once into the cache."""
    folder = builtin_synthetic_dir(cache_dir, num_scenes, seed, objects_per_scene)
    vocabulary = LabelVocabulary(max_objects=None)
    return two_resolutions(lambda resolution: load_training_set(
        folder, resolution=resolution, cache_dir=cache_dir, vocabulary=vocabulary
    ))  # fmt: skip


def scene_split(train_data_dir: str | None, size: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Training and validation indices with whole scenes held out: i-CLEVR draws each scene 3 times (`_0`, `_1`,
    `_2`, one more object each), so a split by image would validate on scenes the model trained on.

    Scenes come from train.json's image names (rows follow its order); sources without names split by row.
    """
    scene_of = list(range(size))
    if train_data_dir is not None:
        names = list(json.loads((Path(train_data_dir) / "train.json").read_text()))
        scene_of = [re.sub(r"_\d+\.\w+$", "", name) for name in names]
    scenes = list(dict.fromkeys(scene_of))
    if len(scenes) < 2:
        raise SystemExit("error: the training data holds a single scene; give --validation_data_dir to validate")
    order = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(seed)).tolist()
    held_out = {scenes[i] for i in order[: max(1, round(fraction * len(scenes)))]}
    validation = [i for i, scene in enumerate(scene_of) if scene in held_out]
    train = [i for i, scene in enumerate(scene_of) if scene not in held_out]
    return train, validation


def load_data(args: argparse.Namespace) -> tuple[Dataset, Dataset, LabelVocabulary, dict]:
    """The training set, the held-out validation set, their vocabulary, and a description for the metrics file."""
    vocabulary = LabelVocabulary(max_objects=None)  # the renderer writes the default objects.json
    objects = args.synthetic_objects_per_scene
    if args.train_data_dir is None and args.dataset_name is None:
        if args.validation_data_dir is None and args.validation_seed == args.synthetic_seed:
            raise SystemExit(
                f"error: --validation_seed {args.validation_seed} is the training render's --synthetic_seed; "
                f"choose another, e.g. {args.synthetic_seed + 1000}"
            )
        train = synthetic_set(args.synthetic_seed, args.synthetic_scenes, objects, args.cache_dir)
        source = {"train": f"synthetic i-CLEVR, seed {args.synthetic_seed}, 1-{objects} objects"}
        if args.validation_data_dir is None:
            validation = synthetic_set(args.validation_seed, args.validation_scenes, objects, args.cache_dir)
            source["validation"] = (
                f"synthetic i-CLEVR, seed {args.validation_seed}, 1-{objects} objects (held-out render)"
            )
    else:
        vocabulary = vocabulary_for(args.train_data_dir, vocabulary)  # objects.json's order when the folder has one
        train = two_resolutions(lambda resolution: load_training_set(
            args.train_data_dir, args.dataset_name, args.image_column, args.label_column, resolution=resolution,
            cache_dir=args.cache_dir, vocabulary=vocabulary))  # fmt: skip
        source = {"train": args.train_data_dir or args.dataset_name}
        if args.validation_data_dir is None:
            train_indices, validation_indices = scene_split(
                args.train_data_dir, len(train), args.validation_fraction, args.seed
            )
            train, validation = Subset(train, train_indices), Subset(train, validation_indices)
            source["validation"] = f"{args.validation_fraction:.0%} of the training scenes, held out"
    if args.validation_data_dir is not None:
        # The training vocabulary is passed on, so a folder whose objects.json orders labels differently is refused.
        validation = two_resolutions(lambda resolution: load_training_set(
            args.validation_data_dir, resolution=resolution, cache_dir=args.cache_dir, vocabulary=vocabulary))
        source["validation"] = args.validation_data_dir
    return train, validation, vocabulary, source


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, small shift and zoom (one affine resample per image), and faint pixel noise."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator).mul_(high - low).add_(low).to(images.device)

    zoom = uniform(*ZOOM_RANGE)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0).to(images.device)
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = zoom * flip
    theta[:, 1, 1] = zoom
    theta[:, 0, 2] = uniform(-MAX_SHIFT, MAX_SHIFT)
    theta[:, 1, 2] = uniform(-MAX_SHIFT, MAX_SHIFT)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # "border" repeats the edge pixels, i.e. more floor, where a shift or zoom-out uncovers the frame.
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    noise = torch.randn(images.shape, generator=generator).to(images.device) * PIXEL_NOISE
    return (moved + noise).clamp_(-1.0, 1.0)


def mix_resolutions(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """The batch at 64x64, with a random `fraction` of its images replaced by their 32x32 version upsampled the way
    the evaluator upsamples any input (its own `prepare`)."""
    native, low = batch["pixel_values"], batch["pixel_values_low"]
    use_low = (torch.rand(native.shape[0], generator=generator) < fraction)[:, None, None, None]
    return torch.where(use_low, model.prepare(low), native)


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, precision, column: str
) -> tuple[torch.Tensor, ...]:
    """Probabilities and targets for one image column ("pixel_values" at 64x64, "pixel_values_low" at 32x32)."""
    model.eval()
    probs, targets = [], []
    for batch in loader:
        with precision():
            probs.append(model(batch[column].to(device)).float().cpu())
        targets.append(batch["class_labels"])
    model.train()
    return torch.cat(probs), torch.cat(targets)


def main(argv: list[str] | None = None) -> dict:
    with one_line_errors():
        return train_evaluator(build_parser().parse_args(argv))


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FlagError(f"--device {name!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError("--device cuda was given but no CUDA GPU is available; use --device cpu")
    return device


def train_evaluator(args: argparse.Namespace) -> dict:
    """Trains the evaluator, saves the checkpoint and `<name>_metrics.json`; returns that report."""
    device = check_arguments(args)
    args.mixed_precision, warning = training_mixed_precision(args.mixed_precision, device)
    if warning:
        print(f"WARNING: {warning}")
    cpu_threads = CpuThreads(args.cpu_threads, device=device)
    torch.manual_seed(args.seed)

    train, validation, vocabulary, source = load_data(args)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=len(train) > args.batch_size,
                        num_workers=args.num_workers, generator=torch.Generator().manual_seed(args.seed))
    validation_loader = DataLoader(validation, batch_size=256, num_workers=args.num_workers)
    print(f"Training on {len(train)} images ({source['train']}); validating on {len(validation)} "
          f"({source['validation']}); device {device}")

    start = time.perf_counter()
    model, metrics, low = fit(args, loader, validation_loader, vocabulary, device, cpu_threads)
    save_evaluator(model, args.output_path)
    report = {
        **metrics,
        "low_resolution": {"resolution": LOW_RESOLUTION, **low},
        "low_resolution_fraction": args.low_resolution_fraction,
        "target_accuracy": TARGET_ACCURACY,
        "reached_target": min(metrics["accuracy"], low["accuracy"]) >= TARGET_ACCURACY,
        "train_images": len(train),
        "train_data": source["train"],
        "validation_data": source["validation"],
        "epochs": args.epochs,
        "mixed_precision": args.mixed_precision,
        **cpu_threads.describe(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_report(report, args.output_path)
    return report


def check_arguments(args: argparse.Namespace) -> torch.device:
    """What the flags alone reveal, before any data is loaded; returns the device."""
    if args.train_data_dir is not None and args.dataset_name is not None:
        raise SystemExit("error: give --train_data_dir or --dataset_name, not both")
    if args.output_path.is_dir():
        raise SystemExit(f"error: --output_path {args.output_path} is a folder; give a file path like checkpoint.pth")
    if not 0.0 <= args.low_resolution_fraction <= 1.0:
        raise SystemExit(
            f"error: --low_resolution_fraction must be between 0 and 1, got {args.low_resolution_fraction}"
        )
    check_writable(args.output_path.parent, "--output_path")  # before training, not after
    return check_device(args.device)


def fit(
    args: argparse.Namespace, loader: DataLoader, validation_loader: DataLoader, vocabulary: LabelVocabulary,
    device: torch.device, cpu_threads: CpuThreads,
) -> tuple[torch.nn.Module, dict, dict]:
    """The training loop; returns the model and the last epoch's held-out metrics at 64x64 and 32->64."""
    model = build_evaluator(len(vocabulary)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    total_steps = args.epochs * len(loader)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(args.warmup_steps, total_steps // 10), total_steps)

    def precision():
        if args.mixed_precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    augment_generator = torch.Generator().manual_seed(args.seed + 1)
    metrics: dict = {}
    low: dict = {}
    progress = tqdm(total=total_steps, desc="training evaluator", unit="step")
    for epoch in range(1, args.epochs + 1):
        for batch in loader:
            images = mix_resolutions(model, batch, args.low_resolution_fraction, augment_generator)
            images = augment(images.to(device), augment_generator)
            with precision():
                logits = model.logits(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), batch["class_labels"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            cpu_threads.update()
            progress.update()
            progress.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", refresh=False)
        metrics = evaluation_metrics(*predict(model, validation_loader, device, precision, "pixel_values"),
                                     vocabulary.labels)
        low = evaluation_metrics(*predict(model, validation_loader, device, precision, "pixel_values_low"),
                                 vocabulary.labels)
        progress.write(f"epoch {epoch}: held-out top-k accuracy {metrics['accuracy']:.4%} at 64x64, "
                       f"{low['accuracy']:.4%} at 32x32 upsampled; exact match {metrics['exact_match']:.4%} / "
                       f"{low['exact_match']:.4%}")
    progress.close()
    return model, metrics, low


def write_report(report: dict, output_path: Path) -> None:
    """`<name>_metrics.json` beside the checkpoint, and a loud warning when the evaluator misses the target."""
    metrics_path = output_path.with_name(f"{output_path.stem}_metrics.json")
    metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    low = report["low_resolution"]
    print(f"Saved {output_path} and {metrics_path}: held-out top-k accuracy {report['accuracy']:.4%} at "
          f"64x64, {low['accuracy']:.4%} at {LOW_RESOLUTION}x{LOW_RESOLUTION} upsampled")
    if not report["reached_target"]:
        print(f"WARNING: THE EVALUATOR IS NOT RELIABLE: held-out top-k accuracy {report['accuracy']:.4%} (64x64) / "
              f"{low['accuracy']:.4%} (32x32) is below the {TARGET_ACCURACY:.1%} target; train longer (--epochs) "
              "or on more scenes (--synthetic_scenes)", file=sys.stderr)


if __name__ == "__main__":
    main()
