"""Pushing to the Hugging Face Hub: a trained pipeline as a self-describing model repo, i-CLEVR as a data set repo.

The token comes from huggingface_hub's usual places (`hf auth login`, $HF_TOKEN) unless one is passed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from training.atomic_folders import make_temporary_folder
from training.data import load_train_dataset
from training.errors import UserError, one_line
from training.export import export_pipeline

# Without --export_dir the export goes to a temporary folder; one left by a killed push is removed by the next.
TEMPORARY_EXPORT_PREFIX = "iclevr-export-"


class HubError(UserError, RuntimeError):
    """A push that could not be done; the message is one line saying why and what to do."""


def check_repo_id(repo_id: str, flag: str = "--hub_model_id") -> str:
    """`namespace/name` with the Hub's allowed characters, else a one-line HubError."""
    example = "your-name/iclevr-ddpm"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(
            f"{flag} {repo_id!r} is not a Hub repo id: use 'namespace/name' (letters, digits, '-', '_', '.'), "
            f"e.g. {example!r}"
        ) from None
    if repo_id.count("/") != 1:
        raise HubError(
            f"{flag} {repo_id!r} has no namespace: use 'namespace/name' (your user or organisation name, then the "
            f"repo name), e.g. {example!r}"
        )
    return repo_id


def _describe(error: Exception) -> str:
    """One line for a Hub/network failure: status and the server's message when there is one."""
    response = getattr(error, "response", None)
    message = getattr(error, "server_message", None) or str(error)
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), type(error).__name__)
    status = getattr(response, "status_code", None)
    return f"HTTP {status}: {first_line}" if status else f"{type(error).__name__}: {one_line(error)[:300]}"


def push_pipeline_to_hub(
    model_dir: str | Path,
    hub_model_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload ICLEVRPipeline",
    export_dir: str | Path | None = None,
    evaluation_report: str | Path | None = None,
    token: str | None = None,
) -> CommitInfo:
    """Exports a trained pipeline folder (see `training.export.export_pipeline`) and uploads the export.

    Creates the model repo if needed (`private` applies to a new repo only) and, with `revision`, the branch (from
    main). Files already on the Hub with the same content are not uploaded again. The export goes to `export_dir`,
    or to a temporary folder removed after a successful push; a failed push raises `HubError` and keeps the export
    (the message names it), and `model_dir` is never modified. Returns the commit (`.commit_url`, `.oid`).
    """
    check_repo_id(hub_model_id)
    # The export comes first, so a bad folder fails before anything is created on the Hub.
    temporary = export_dir is None
    if temporary:
        export_dir = make_temporary_folder(Path(tempfile.gettempdir()), TEMPORARY_EXPORT_PREFIX) / "pipeline"
    export_dir = Path(export_dir)
    try:
        export_pipeline(
            model_dir, export_dir, hub_model_id=hub_model_id, revision=revision, evaluation_report=evaluation_report
        )
        commit = _upload(export_dir, hub_model_id, private, revision, commit_message, token)
    except HubError as error:
        raise HubError(
            f"pushing {model_dir} to {hub_model_id} failed ({error}); the export is intact in {export_dir}: run the "
            f"push again to retry (files already on the Hub are not re-uploaded)"
        ) from error.__cause__
    except BaseException:
        if temporary:
            shutil.rmtree(export_dir.parent, ignore_errors=True)
        raise
    if temporary:
        shutil.rmtree(export_dir.parent, ignore_errors=True)
    return commit


def _upload(
    folder: Path, repo_id: str, private: bool, revision: str | None, commit_message: str, token: str | None
) -> CommitInfo:
    """Creates the repo (and branch) if needed and uploads `folder`; any failure on the way, whatever the transport
    raises (an unreachable server, a timeout, an HTTP error), is a `HubError` saying why in one line."""
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    except Exception as error:  # only Hub calls above: every failure is a failed push, the export is on disk
        raise HubError(_describe(error)) from error


def push_dataset_to_hub(
    train_data_dir: str | Path,
    hub_dataset_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload i-CLEVR training set",
    token: str | None = None,
) -> CommitInfo:
    """Pushes an i-CLEVR folder (train.json + images) as a `datasets` data set with columns "image" and "labels".

    The folder is read and validated by `training.data.load_train_dataset`, so what trains from the Hub
    (`train_conditional.py --dataset_name ID`) is exactly what trains from the folder; images are embedded in the
    Parquet files.
    """
    check_repo_id(hub_dataset_id, flag="--hub_dataset_id")
    dataset = load_train_dataset(train_data_dir=train_data_dir)
    try:
        return dataset.push_to_hub(
            hub_dataset_id, private=private, revision=revision, commit_message=commit_message, token=token
        )
    except Exception as error:  # the upload is the only call here: every failure is a failed push
        raise HubError(
            f"pushing {train_data_dir} to the data set {hub_dataset_id} failed ({_describe(error)}); nothing was "
            "changed locally: run the push again to retry"
        ) from error
