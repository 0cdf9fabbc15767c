"""Push a trained i-CLEVR pipeline to the Hub as a self-describing repo (or only export it to a folder).

    python scripts/push_to_hub.py --model_dir iclevr-ddpm --hub_model_id your-name/iclevr-ddpm
    python scripts/push_to_hub.py --model_dir iclevr-ddpm --hub_model_id your-name/iclevr-ddpm --hub_revision exp-1
    python scripts/push_to_hub.py --model_dir iclevr-ddpm --export_dir iclevr-ddpm-export   # offline: export only

The repo (or export folder) holds the safetensors weights, the pipeline code and a model card; it loads anywhere with
`DiffusionPipeline.from_pretrained(ID_OR_FOLDER, trust_remote_code=True)`. Checkpoints, logs and validation grids
of the training run are not uploaded. Log in first with `hf auth login` (or set HF_TOKEN).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout; no install step

from training.cli import ArgumentParser, check_writable  # noqa: E402
from training.errors import one_line_errors  # noqa: E402
from training.export import export_pipeline  # noqa: E402
from training.hub import push_pipeline_to_hub  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", type=Path, required=True, help="the --output_dir of a finished training run")
    parser.add_argument(
        "--hub_model_id", default=None, help="namespace/name of the model repo; leave out to only export"
    )
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repo as private (new repos only)")
    parser.add_argument("--hub_revision", default=None, help="push to this branch (created from main) instead of main")
    parser.add_argument(
        "--export_dir", type=Path, default=None, help="write the export here and keep it (default: a temporary folder)"
    )
    parser.add_argument(
        "--evaluation_report",
        type=Path,
        default=None,
        help="report.json of scripts/evaluate.py (default: MODEL_DIR/report.json if present)",
    )
    parser.add_argument("--commit_message", default="Upload ICLEVRPipeline")
    args = parser.parse_args(argv)
    if args.hub_model_id is None:
        if args.export_dir is None:
            parser.error("give --hub_model_id to push, or --export_dir to only export the pipeline to a folder")
        if args.hub_private_repo or args.hub_revision:
            parser.error("--hub_private_repo and --hub_revision need --hub_model_id")
    return args


def main(argv: list[str] | None = None) -> None:
    with one_line_errors():
        args = parse_args(argv)
        if args.export_dir is not None:
            check_writable(args.export_dir.parent, "--export_dir")  # the export is written beside it
        if args.hub_model_id is None:
            folder = export_pipeline(args.model_dir, args.export_dir, evaluation_report=args.evaluation_report)
            print(f"exported -> {folder}")
            print(f"load it with DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)")
            return
        commit = push_pipeline_to_hub(
            args.model_dir,
            args.hub_model_id,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            commit_message=args.commit_message,
            export_dir=args.export_dir,
            evaluation_report=args.evaluation_report,
        )
    print(f"pushed -> {commit.commit_url}")
    print(
        f"load it with DiffusionPipeline.from_pretrained({args.hub_model_id!r}, trust_remote_code=True, "
        f"revision={commit.oid!r})"
    )


if __name__ == "__main__":
    main()
