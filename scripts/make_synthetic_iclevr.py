"""Render the synthetic i-CLEVR dataset in the real i-CLEVR folder layout.

    python scripts/make_synthetic_iclevr.py --output_dir data/iclevr --num_scenes 6003 --seed 0

writes data/iclevr/{train.json, objects.json, test.json, new_test.json, iclevr/CLEVR_train_%06d_%d.png}.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

from training.cli import ArgumentParser, check_writable  # noqa: E402
from training.errors import one_line_errors  # noqa: E402
from training.synthetic_iclevr import MAX_OBJECTS_PER_SCENE, OBJECTS_PER_SCENE, render_dataset, save_preview  # noqa: E402


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True, help="folder to create (must be new or empty)")
    parser.add_argument("--num_scenes", type=_at_least(1), default=6003,
                        help="scenes to draw; one image per object (1, 2, 3 objects by default)")
    parser.add_argument("--objects_per_scene", type=int, choices=range(1, MAX_OBJECTS_PER_SCENE + 1),
                        default=OBJECTS_PER_SCENE, metavar=f"1..{MAX_OBJECTS_PER_SCENE}",
                        help="objects in a full scene (i-CLEVR: 3; the course evaluator's renders: 5)")
    parser.add_argument("--seed", type=_at_least(0), default=0, help="same seed and arguments -> identical files")
    parser.add_argument(
        "--num_workers", type=_at_least(1), default=os.cpu_count() or 1, help="rendering processes (default: all cores)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument(
        "--preview", type=Path, default=None, help="also save a grid of the first 32 images at 64x64 to this PNG"
    )
    args = parser.parse_args(argv)
    if args.output_dir.exists() and not args.output_dir.is_dir():
        parser.error(f"--output_dir {args.output_dir} is a file; give a folder path")
    if args.output_dir.is_dir() and any(args.output_dir.iterdir()) and not args.overwrite:
        parser.error(f"--output_dir {args.output_dir} is not empty; choose a new folder or pass --overwrite")
    return args


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        args = parse_args(argv)
        check_writable(args.output_dir.parent, "--output_dir")  # the render is written beside it, then renamed
        if args.preview is not None:
            check_writable(args.preview.parent, "--preview")
        _render(args)


def _render(args: argparse.Namespace) -> None:
    stats = render_dataset(
        args.output_dir,
        num_scenes=args.num_scenes,
        seed=args.seed,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        objects_per_scene=args.objects_per_scene,
    )
    print(
        f"rendered {stats['images']} images in {stats['seconds']:.1f} s "
        f"({stats['images_per_second']:.1f} images/s) -> {args.output_dir}"
    )
    if args.preview is not None:
        print(f"preview grid -> {save_preview(args.output_dir, args.preview)}")


if __name__ == "__main__":
    main()
