"""Protocol smoke tests of the Hub test double, driven through the real huggingface_hub and datasets clients."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import HubServer


@pytest.fixture
def api() -> HfApi:
    return HfApi()


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A small model-like folder: a JSON config (regular git file) and binary weights (LFS) in a subfolder."""
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "ICLEVRPipeline"}')
    (folder / "unet" / "config.json").write_text('{"sample_size": 8}')
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(bytes(range(256)) * 8)
    return folder


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_client_points_at_the_loopback_server(hub_server: HubServer):
    from huggingface_hub import constants

    assert constants.ENDPOINT == hub_server.endpoint
    assert constants.HF_HUB_DISABLE_XET


def test_create_repo_sends_the_private_flag(api, hub_server, hub_repo_id):
    api.create_repo(hub_repo_id, private=True)

    [create] = [r for r in hub_server.find_requests("POST", "/api/repos/create") if r.body["name"] in hub_repo_id]
    assert create.body["visibility"] == "private"
    assert api.repo_info(hub_repo_id).private is True


def test_create_repo_twice_conflicts_unless_exist_ok(api, hub_repo_id):
    api.create_repo(hub_repo_id, repo_type="dataset")

    assert api.create_repo(hub_repo_id, repo_type="dataset", exist_ok=True).repo_id == hub_repo_id
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(hub_repo_id, repo_type="dataset")
    assert error.value.response.status_code == 409


def test_upload_folder_then_snapshot_download_gives_identical_bytes(api, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    downloaded = _tree_bytes(Path(snapshot_download(hub_repo_id)))

    assert {k: v for k, v in downloaded.items() if k != ".gitattributes"} == _tree_bytes(model_folder)


def test_weights_go_through_lfs_and_text_files_through_git(api, hub_server, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    files = {f.path: f for f in api.list_repo_tree(hub_repo_id, recursive=True) if hasattr(f, "size")}
    assert files["unet/diffusion_pytorch_model.safetensors"].lfs.size == 2048
    assert files["unet/config.json"].lfs is None
    assert hub_server.find_requests("PUT", f"/__lfs__/model/{hub_repo_id}/")


def test_hf_hub_download_of_an_older_commit_returns_the_old_content(api, hub_repo_id, tmp_path):
    api.create_repo(hub_repo_id)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes.txt", repo_id=hub_repo_id)
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes.txt", repo_id=hub_repo_id)

    assert Path(hf_hub_download(hub_repo_id, "notes.txt", revision=first.oid)).read_bytes() == b"v1"
    assert Path(hf_hub_download(hub_repo_id, "notes.txt")).read_bytes() == b"v2"


def test_upload_to_a_branch_leaves_main_unchanged(api, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)
    main_sha = api.repo_info(hub_repo_id).sha
    (model_folder / "unet" / "config.json").write_text('{"sample_size": 16}')

    api.create_branch(hub_repo_id, branch="experiment", exist_ok=True)
    api.create_branch(hub_repo_id, branch="experiment", exist_ok=True)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder, revision="experiment")

    on_branch = hf_hub_download(hub_repo_id, "unet/config.json", revision="experiment")
    assert Path(on_branch).read_text() == '{"sample_size": 16}'
    assert Path(hf_hub_download(hub_repo_id, "unet/config.json")).read_text() == '{"sample_size": 8}'
    assert api.repo_info(hub_repo_id).sha == main_sha
    assert {ref.name for ref in api.list_repo_refs(hub_repo_id).branches} == {"main", "experiment"}


def test_reupload_of_an_unchanged_folder_makes_no_commit(api, hub_server, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)
    commits_before = len(api.list_repo_commits(hub_repo_id))

    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    assert len(api.list_repo_commits(hub_repo_id)) == commits_before
    assert len(hub_server.find_requests("POST", f"/api/models/{hub_repo_id}/commit/")) == 1
    assert len(hub_server.find_requests("PUT", f"/__lfs__/model/{hub_repo_id}/")) == 1


def test_list_repo_files_and_tree_show_files_and_folders(api, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    assert set(api.list_repo_files(hub_repo_id)) == {".gitattributes", "model_index.json", "unet/config.json",
                                                     "unet/diffusion_pytorch_model.safetensors"}
    top_level = {entry.path: type(entry).__name__ for entry in api.list_repo_tree(hub_repo_id)}
    assert top_level == {".gitattributes": "RepoFile", "model_index.json": "RepoFile", "unet": "RepoFolder"}
    [info] = api.get_paths_info(hub_repo_id, ["unet/config.json", "missing.txt"])
    assert info.size == len('{"sample_size": 8}')


def test_delete_folder_removes_its_files(api, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    api.delete_folder("unet", repo_id=hub_repo_id)

    assert set(api.list_repo_files(hub_repo_id)) == {".gitattributes", "model_index.json"}


def test_range_reads_return_the_requested_bytes(api, hub_server, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=bytes(range(100)), path_in_repo="blob.bin", repo_id=hub_repo_id)

    with HfFileSystem().open(f"{hub_repo_id}/blob.bin", "rb", block_size=5) as remote:
        remote.seek(10)
        assert remote.read(5) == bytes(range(10, 15))
    ranges = [r.headers.get("range") for r in hub_server.find_requests("GET", f"/{hub_repo_id}/resolve/")]
    assert any(r and r.startswith("bytes=10-") for r in ranges)  # fsspec reads ahead a block


def test_subprocesses_reach_the_same_server(api, hub_repo_id):
    api.create_repo(hub_repo_id)
    code = f"from huggingface_hub import HfApi; print(HfApi().repo_info({hub_repo_id!r}).id)"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == hub_repo_id


def test_missing_repo_raises_repository_not_found(api, hub_repo_id):
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(hub_repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id, "config.json")


def test_private_repo_is_not_found_without_a_token(hub_repo_id):
    HfApi().create_repo(hub_repo_id, private=True)

    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).repo_info(hub_repo_id)


def test_missing_file_and_revision_raise_the_clients_errors(api, hub_repo_id):
    api.create_repo(hub_repo_id)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "no-such-file.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", revision="no-such-branch")
    assert not api.file_exists(hub_repo_id, "no-such-file.json")


def test_failed_commit_raises_a_clear_error_and_keeps_the_branch(api, hub_server, hub_repo_id, model_folder):
    api.create_repo(hub_repo_id)
    sha_before = api.repo_info(hub_repo_id).sha
    hub_server.fail_next("POST", f"/api/models/{hub_repo_id}/commit/", status=500)

    with pytest.raises(HfHubHTTPError, match="Injected failure") as error:
        api.upload_folder(repo_id=hub_repo_id, folder_path=model_folder)

    assert error.value.response.status_code == 500
    assert api.repo_info(hub_repo_id).sha == sha_before


def test_dataset_push_to_hub_then_load_dataset_round_trips(hub_repo_id):
    import datasets
    from PIL import Image

    pixels = [np.full((4, 6, 3), shade, dtype=np.uint8) for shade in (0, 120, 255)]
    labels = [["red cube"], ["blue sphere", "gray cylinder"], []]
    dataset = datasets.Dataset.from_dict({"image": [Image.fromarray(p) for p in pixels], "labels": labels})
    dataset = dataset.cast_column("image", datasets.Image())

    dataset.push_to_hub(hub_repo_id, private=True)
    loaded = datasets.load_dataset(hub_repo_id, split="train")

    assert loaded["labels"] == labels
    assert all(np.array_equal(np.asarray(row["image"]), p) for row, p in zip(loaded, pixels))
    assert isinstance(loaded.features["image"], datasets.Image)
