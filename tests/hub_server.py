"""A test double of the Hugging Face Hub protocol, served on 127.0.0.1 so the suite never needs the internet.

The real clients (`huggingface_hub`, `datasets`, `diffusers`) talk to it unchanged once `HF_ENDPOINT` points here;
see `configure_hub_environment`, which must run before `huggingface_hub` is first imported (its constants read the
environment at import time).

Implemented, with the request and response shapes `huggingface_hub` 2.4 sends and parses:
  POST   /api/repos/create, DELETE /api/repos/delete, POST /api/validate-yaml, GET /api/whoami-v2
  GET    /api/{models|datasets|spaces}/{ns}/{name}[/revision/{rev}]      repo info with siblings (blobs=1: sizes, lfs)
  GET    .../refs    .../commits/{rev}    .../tree/{rev}[/{path}]    POST .../paths-info/{rev}
  POST   .../preupload/{rev} (regular or LFS by suffix, size or NUL bytes; returns the oid of the file already there,
         so the client skips unchanged files)    POST .../commit/{rev} (NDJSON: header, file, lfsFile, deletedFile,
         deletedFolder; parentCommit -> 412 when stale; create_pr=1 -> a refs/pr/N branch)
  POST / DELETE .../branch/{branch}
  POST   /{[datasets/]ns/name}.git/info/lfs/objects/batch (basic transfer) and the PUT it points back to
  HEAD / GET /{[datasets/]ns/name}/resolve/{rev}/{path} with X-Repo-Commit, quoted ETag (git blob sha1, or sha256
         plus X-Linked-Etag/X-Linked-Size for LFS), Content-Length and Range requests
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) and a JSON `error` message, so the client
raises its own exceptions. A private repo answers 401 RepoNotFound to a request without an Authorization header.

Not implemented: Xet storage (set HF_HUB_DISABLE_XET=1), tags, pull-request discussions, gated repos, Spaces
runtimes, .gitignore handling, multipart LFS, pagination (every listing is one page), repo ids without a namespace
in URLs. Revisions are branch names or full 40-character commit shas. Everything lives in memory. As on the Hub, a
new repo starts with an "initial commit" holding a .gitattributes file. (datasets also asks the dataset viewer at
datasets-server.<endpoint host>; that name does not resolve, and datasets ignores the failure.)

Test hooks: `server.requests` logs every call (method, unquoted path, query, parsed JSON/NDJSON/form body, headers),
`server.fail_next(method, path_substring, status, count)` makes matching calls fail, `server.reset()` forgets all.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
# Files stored through LFS, as a fresh Hub repo's .gitattributes says (abridged), plus anything binary or large.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".parquet", ".arrow", ".npy", ".npz", ".h5",
                ".onnx", ".msgpack", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".zip", ".gz", ".tar")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
KIND_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}

_API = r"/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_FILES = r"/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error answer: status, the Hub's X-Error-Code (if any) and a message the client shows."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra or {}


@dataclass
class Blob:
    data: bytes
    lfs: bool
    sha256: str = field(init=False)
    pointer: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                        f"size {len(self.data)}\n").encode()

    @property
    def git_oid(self) -> str:  # a git blob id: of the pointer file for LFS, as git stores it
        return _git_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:  # what the client compares with its local oid: sha256 for LFS, git sha1 otherwise
        return self.sha256 if self.lfs else _git_oid(self.data)


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    tree: dict[str, Blob]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    created_at: str = field(default_factory=_now)

    def resolve(self, revision: str) -> Commit:
        sha = self.branches.get(revision, revision)
        if sha not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[sha]


@dataclass
class HubRequest:
    method: str
    path: str  # unquoted, without the query string
    query: dict[str, list[str]]
    body: Any  # parsed JSON, list of NDJSON items, form dict, or None for raw bytes
    headers: dict[str, str]


class HubServer:
    """In-memory Hub state plus the loopback HTTP server that serves it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[HubRequest] = []
        self._failures: list[list] = []  # [method, path_substring, status, remaining]
        self._http = ThreadingHTTPServer((host, port), _Handler)
        self._http.daemon_threads = True
        self._http.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://{host}:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, name="hub-test-server", daemon=True)
        self._thread.start()

    # ---- test hooks -------------------------------------------------------------------------------------------
    def fail_next(self, method: str, path_substring: str, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` requests whose method matches and unquoted path contains `path_substring` with
        `status`. The client retries 408/429/5xx, sleeping 1 s, 2 s, 4 s..., on preupload, the LFS batch and PUT,
        tree/commit listings and the HEAD of a file it has not cached, but not on `/commit/`, repos/create, repo
        info or resolve GETs: fail a retried call with a 4xx status (or count > 5). Unused failures stay armed until
        `clear_failures()` or `reset()` (the suite's conftest clears them after each test)."""
        with self._lock:
            self._failures.append([method.upper(), path_substring, status, count])

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def reset(self) -> None:
        with self._lock:
            self.repos.clear()
            self.requests.clear()
            self._failures.clear()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def find_requests(self, method: str, path_substring: str = "") -> list[HubRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == method.upper() and path_substring in r.path]

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """The files of a repo at a revision, read straight from the store (no client involved)."""
        with self._lock:
            commit = self._repo(repo_type, repo_id).resolve(revision)
            return {path: blob.data for path, blob in commit.tree.items()}

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for failure in self._failures:
                if failure[0] == method and failure[1] in path and failure[3] > 0:
                    failure[3] -= 1
                    return failure[2]
        return None

    def _repo(self, repo_type: str, repo_id: str, authorized: bool = True) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authorized):
            raise HubError(404 if repo is None else 401, "Repository not found", "RepoNotFound")
        return repo

    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    def _new_commit(self, repo: Repo, parent: Commit | None, title: str, message: str,
                    tree: dict[str, Blob]) -> Commit:
        digest = hashlib.sha1(f"{next(self._counter)}\n{parent and parent.sha}\n{title}\n{message}".encode())
        for path in sorted(tree):
            digest.update(f"{path}\0{tree[path].git_oid}\n".encode())
        commit = Commit(digest.hexdigest(), parent and parent.sha, title, message, tree)
        repo.commits[commit.sha] = commit
        return commit

    def _file_entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        blob = commit.tree[path]
        entry: dict[str, Any] = {"type": "file", "oid": blob.git_oid, "size": len(blob.data), "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": len(blob.pointer)}
        if expand:  # the last commit that changed this file
            last = commit
            while last.parent and repo.commits[last.parent].tree.get(path) is blob:
                last = repo.commits[last.parent]
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    @staticmethod
    def _folder_entry(commit: Commit, path: str) -> dict:
        inside = sorted(p for p in commit.tree if p.startswith(path + "/"))
        oid = hashlib.sha1("".join(p + commit.tree[p].git_oid for p in inside).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": path}

    # ---- endpoints: each takes (request, **url groups) and returns (status, headers, body) ------------------------
    def create_repo(self, req: _Call) -> tuple:
        body = req.json()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        key = (repo_type, repo_id)
        if key in self.repos:
            url = self._url(self.repos[key])
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})  # client reads url
        repo = Repo(repo_type, repo_id, private=body.get("visibility") == "private" or bool(body.get("private")))
        initial = self._new_commit(repo, None, "initial commit", "", {".gitattributes": Blob(GITATTRIBUTES, False)})
        repo.branches["main"] = initial.sha
        self.repos[key] = repo
        return _json({"url": self._url(repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, req: _Call) -> tuple:
        body = req.json()
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        repo = self._repo(body.get("type") or "model", repo_id)
        del self.repos[(repo.repo_type, repo.repo_id)]
        return _json({})

    def validate_yaml(self, req: _Call) -> tuple:
        return _json({"errors": [], "warnings": []})

    def whoami(self, req: _Call) -> tuple:
        return _json({"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                      "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": "write"}}})

    def repo_info(self, req: _Call, kind: str, repo: str, rev: str = "main") -> tuple:
        repo_ = req.repo(kind, repo)
        commit = repo_.resolve(rev)
        blobs = req.flag("blobs")
        siblings = []
        for path in sorted(commit.tree):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = self._file_entry(repo_, commit, path, expand=False)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["oid"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        return _json({"_id": repo_.repo_id, "id": repo_.repo_id, "author": repo_.repo_id.split("/")[0],
                      "sha": commit.sha, "private": repo_.private, "disabled": False, "gated": False,
                      "createdAt": repo_.created_at, "lastModified": commit.date, "downloads": 0, "likes": 0,
                      "tags": [], "siblings": siblings})

    def refs(self, req: _Call, kind: str, repo: str) -> tuple:
        repo_ = req.repo(kind, repo)
        branches, prs = [], []
        for name, sha in repo_.branches.items():
            is_pr = name.startswith("refs/pr/")
            ref = {"name": name, "ref": name if is_pr else f"refs/heads/{name}", "targetCommit": sha}
            (prs if is_pr else branches).append(ref)
        return _json({"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def commits(self, req: _Call, kind: str, repo: str, rev: str) -> tuple:
        repo_ = req.repo(kind, repo)
        commit: Commit | None = repo_.resolve(rev)
        history = []
        while commit is not None:
            history.append({"id": commit.sha, "title": commit.title, "message": commit.message,
                            "authors": [{"user": USER, "avatar": ""}], "date": commit.date})
            commit = repo_.commits[commit.parent] if commit.parent else None
        return _json(history)

    def tree(self, req: _Call, kind: str, repo: str, rev: str, path: str = "") -> tuple:
        repo_ = req.repo(kind, repo)
        commit = repo_.resolve(rev)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        if path and not any(p.startswith(prefix) for p in commit.tree):
            raise HubError(404, f"Folder {path} does not exist at {rev}", "EntryNotFound")
        recursive, expand = req.flag("recursive"), req.flag("expand")
        entries, folders = [], set()
        for file_path in sorted(p for p in commit.tree if p.startswith(prefix)):
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append(self._folder_entry(commit, folder))
            if recursive or len(parts) == 1:
                entries.append(self._file_entry(repo_, commit, file_path, expand))
        return _json(entries)

    def paths_info(self, req: _Call, kind: str, repo: str, rev: str) -> tuple:
        repo_ = req.repo(kind, repo)
        commit = repo_.resolve(rev)
        form = req.body_value()
        expand = str(form.get("expand", ["false"])[0]).lower() in ("1", "true")
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.tree:
                entries.append(self._file_entry(repo_, commit, path, expand))
            elif any(p.startswith(path + "/") for p in commit.tree):
                entries.append(self._folder_entry(commit, path))
        return _json(entries)

    def preupload(self, req: _Call, kind: str, repo: str, rev: str) -> tuple:
        commit = req.repo(kind, repo).resolve(rev)
        answers = []
        for item in req.json()["files"]:
            existing = commit.tree.get(item["path"])
            sample = base64.b64decode(item.get("sample", ""))
            lfs = (item["path"].lower().endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
                   or bool(existing and existing.lfs))
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            "oid": existing.etag if existing else None})
        return _json({"files": answers, "commitOid": commit.sha})

    def commit(self, req: _Call, kind: str, repo: str, rev: str) -> tuple:
        repo_ = req.repo(kind, repo)
        if rev not in repo_.branches:
            raise HubError(404, f"Invalid rev id: {rev} is not a branch", "RevisionNotFound")
        items = req.body_value()
        if not items or items[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line of a commit must be its header")
        header = items[0]["value"]
        head = repo_.commits[repo_.branches[rev]]
        if header.get("parentCommit") and header["parentCommit"] != head.sha:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(head.tree)
        for item in items[1:]:
            key, value = item["key"], item["value"]
            path = value["path"].strip("/")
            if key == "file":
                tree[path] = Blob(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in repo_.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} for {path} was not uploaded")
                tree[path] = Blob(repo_.lfs_objects[value["oid"]], lfs=True)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                for file_path in [p for p in tree if p.startswith(path + "/")]:
                    del tree[file_path]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        branch, pr_url = rev, None
        if req.flag("create_pr"):
            number = 1 + sum(name.startswith("refs/pr/") for name in repo_.branches)
            branch, pr_url = f"refs/pr/{number}", f"{self._url(repo_)}/discussions/{number}"
        new = self._new_commit(repo_, head, header["summary"], header.get("description", ""), tree)
        repo_.branches[branch] = new.sha
        return _json({"success": True, "commitOid": new.sha, "commitUrl": f"{self._url(repo_)}/commit/{new.sha}",
                      "commitMessage": header["summary"], "hookOutput": "", "pullRequestUrl": pr_url})

    def create_branch(self, req: _Call, kind: str, repo: str, branch: str) -> tuple:
        repo_ = req.repo(kind, repo)
        if branch in repo_.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = repo_.resolve(req.json().get("startingPoint") or "main")
        repo_.branches[branch] = start.sha
        return _json({})

    def delete_branch(self, req: _Call, kind: str, repo: str, branch: str) -> tuple:
        repo_ = req.repo(kind, repo)
        if repo_.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return _json({})

    def lfs_batch(self, req: _Call, repo: str, kind: str | None = None) -> tuple:
        repo_ = req.repo(kind or "models", repo)
        objects = []
        for obj in req.json()["objects"]:
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in repo_.lfs_objects:  # no actions = "already there", the client skips the upload
                href = f"{self.endpoint}/__lfs__/{repo_.repo_type}/{repo_.repo_id}/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href, "expires_in": 3600}}
            objects.append(answer)
        return _json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, req: _Call, repo_type: str, repo: str, oid: str) -> tuple:
        repo_ = self._repo(repo_type, repo)
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded bytes do not match sha256 {oid}")
        repo_.lfs_objects[oid] = req.body
        return 200, {}, b""

    def resolve(self, req: _Call, repo: str, rev: str, path: str, kind: str | None = None) -> tuple:
        repo_ = req.repo(kind or "models", repo)
        commit = repo_.resolve(rev)
        blob = commit.tree.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
        data, status = blob.data, 200
        byte_range = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range", "").strip())
        if byte_range:
            first, last = byte_range.groups()
            start = int(first) if first else max(len(data) - int(last), 0)
            end = min(int(last), len(data) - 1) if first and last else len(data) - 1
            if start >= len(data):
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            data, status = data[start:end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
        return status, headers, data


ROUTES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    (methods, re.compile(pattern), name) for methods, pattern, name in [
        (("POST",), r"/api/repos/create", "create_repo"),
        (("DELETE", "POST"), r"/api/repos/delete", "delete_repo"),
        (("POST",), r"/api/validate-yaml", "validate_yaml"),
        (("GET",), r"/api/whoami-v2", "whoami"),
        (("GET",), _API + r"(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        (("GET",), _API + r"/refs", "refs"),
        (("GET",), _API + r"/commits/(?P<rev>[^/]+)", "commits"),
        (("GET",), _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        (("POST",), _API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        (("POST",), _API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        (("POST",), _API + r"/commit/(?P<rev>[^/]+)", "commit"),
        (("POST",), _API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        (("DELETE",), _API + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
        (("POST",), _FILES + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        (("PUT",), r"/__lfs__/(?P<repo_type>\w+)/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        (("GET", "HEAD"), _FILES + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


def _json(obj: Any, status: int = 200, content_type: str = "application/json") -> tuple:
    return status, {"Content-Type": content_type}, json.dumps(obj).encode()


@dataclass
class _Call:
    """One parsed request, handed to an endpoint."""

    hub: HubServer
    headers: Any
    query: dict[str, list[str]]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def body_value(self) -> Any:
        """The body as the log shows it: JSON, a list of NDJSON items, a form dict, or None."""
        content_type = self.headers.get("Content-Type", "")
        if "ndjson" in content_type:
            return [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if "json" in content_type:
            return json.loads(self.body or b"null")
        if "x-www-form-urlencoded" in content_type:
            return parse_qs(self.body.decode())
        return None

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")

    def repo(self, kind: str, repo_id: str) -> Repo:
        repo_type = KIND_TO_TYPE.get(kind, kind)
        return self.hub._repo(repo_type, repo_id, authorized="Authorization" in self.headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses one connection pool

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):  # httpx streams file objects chunked
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        call = _Call(hub, self.headers, parse_qs(url.query), self._read_body())
        path = unquote(url.path)
        try:
            logged = call.body_value()
        except ValueError:  # malformed body: the endpoint will answer the error
            logged = None
        with hub._lock:
            hub.requests.append(HubRequest(self.command, path, call.query, logged, dict(self.headers)))
        try:
            status = hub._take_failure(self.command, path)
            if status is not None:
                raise HubError(status, f"Injected failure (fail_next) for {self.command} {path}")
            for methods, pattern, name in ROUTES:
                match = pattern.fullmatch(url.path)
                if match and self.command in methods:
                    groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    with hub._lock:
                        status, headers, body = getattr(hub, name)(call, **groups)
                    break
            else:
                raise HubError(404, f"The Hub test double has no route for {self.command} {url.path}")
        except HubError as error:
            headers = {"Content-Type": "application/json", **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            status, body = error.status, json.dumps({"error": str(error), **error.extra}).encode()
        except Exception as error:  # a bug here: 501, which the client does not retry, with the cause
            headers = {"Content-Type": "application/json"}
            status, body = 501, json.dumps({"error": f"Hub test double crashed on {path}: {error!r}"}).encode()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch


def start_hub_server() -> HubServer:
    """Start the Hub test double on 127.0.0.1 at a free port, serving from a daemon thread."""
    return HubServer()


def configure_hub_environment(server: HubServer, hf_home: str | Path) -> dict[str, str]:
    """Point every Hub client of this process and its subprocesses at `server`; returns the variables it set.

    Must run before `huggingface_hub` is first imported: its constants read these variables once, at import."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.ENDPOINT != server.endpoint:
        raise RuntimeError("huggingface_hub was imported before configure_hub_environment(): move the Hub set-up "
                           "above every import of huggingface_hub, datasets or diffusers")
    variables = {
        "HF_ENDPOINT": server.endpoint,
        "HF_TOKEN": "hf_test_double_dummy_token",
        "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed, but this server speaks plain LFS only
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would ping an S3 bucket on every load_dataset
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    }
    os.environ.update(variables)
    return variables
