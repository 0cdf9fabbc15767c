"""Push an i-CLEVR folder (e.g. a synthetic render) to the Hub as a `datasets` data set: columns "image", "labels".

    python scripts/make_synthetic_iclevr.py --output_dir data/iclevr
    python scripts/push_dataset_to_hub.py --train_data_dir data/iclevr --hub_dataset_id your-name/synthetic-iclevr
    accelerate launch train_conditional.py --dataset_name your-name/synthetic-iclevr

Log in first with `hf auth login` (or set HF_TOKEN).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

from training.cli import ArgumentParser  # noqa: E402
from training.errors import one_line_errors  # noqa: E402
from training.hub import push_dataset_to_hub  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", type=Path, required=True, help="i-CLEVR folder: train.json + images")
    parser.add_argument("--hub_dataset_id", required=True, help="namespace/name of the data set repo")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repo as private (new repos only)")
    parser.add_argument("--hub_revision", default=None, help="push to this branch instead of main")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        args = parse_args(argv)
        commit = push_dataset_to_hub(
            args.train_data_dir, args.hub_dataset_id, private=args.hub_private_repo, revision=args.hub_revision
        )
    print(f"pushed -> {commit.commit_url}")
    print(f"train from it with: accelerate launch train_conditional.py --dataset_name {args.hub_dataset_id}")


if __name__ == "__main__":
    main()
