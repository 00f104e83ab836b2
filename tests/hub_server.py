"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for push/pull tests without the network.

It speaks the subset of the Hub protocol that ``huggingface_hub`` (2.x) and ``transformers.from_pretrained``
use: create a repo, preupload (every file "regular": content inline in the commit), commit (NDJSON), model
info, file tree, README YAML validation, ``whoami`` and ``resolve`` downloads (GET/HEAD with ETag,
X-Repo-Commit, Content-Length; 404 + ``X-Error-Code`` for a missing repo/file). Repos live in memory.

Writes need ``Authorization: Bearer <token>`` with a token from ``tokens``. Set ``fail_commits = True`` to make
every commit answer HTTP 500 without applying it (a push that fails half-way: repo created, files
pre-uploaded, commit refused). ``requests`` records ``(method, path)`` of every request, ``commit_log`` the header
of every commit. Pull requests: a commit with ``create_pr``, or to ``refs/pr/<n>`` of one opened through
``discussions``, lands in ``pull_requests[n]``, not on main. Branches: ``POST /api/models/<repo>/branch/<name>``
creates one from main (``branches[name]``); a commit or file list at a branch that does not exist answers 404
RevisionNotFound, as the Hub does. Downloads (``resolve``) read main only.
Not covered: LFS/Xet uploads, branches, merging pull requests.

    with HubServer() as hub:            # then set HF_ENDPOINT=hub.url in a subprocess and push / pull
        ...
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

TOKEN = "hf_test_token"
USER = "tester"

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_DISCUSSIONS = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions(?:/(?P<num>\d+))?$")
_BRANCH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<branch>[^/]+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+|[^/]+)(?:/(?P<action>revision|preupload|commit|tree|paths-info)"
                  r"(?:/(?P<rev>[^/]+))?(?P<rest>/.*)?)?$")


def validate_card_metadata(metadata: dict) -> list[str]:
    """The checks the Hub applies to a model card's YAML that matter here; returns error messages."""
    errors = []
    if not isinstance(metadata, dict):
        return ["metadata must be a YAML mapping"]
    for key in ("library_name", "pipeline_tag", "license"):
        if key in metadata and not isinstance(metadata[key], str):
            errors.append(f"{key} must be a string")
    for key in ("tags", "datasets"):
        if key in metadata and not (isinstance(metadata[key], list) and all(isinstance(t, str) for t in metadata[key])):
            errors.append(f"{key} must be a list of strings")
    if "base_model" in metadata and not isinstance(metadata["base_model"], (str, list)):
        errors.append("base_model must be a repo id or a list of them")
    for i, entry in enumerate(metadata.get("model-index") or []):
        if not isinstance(entry.get("name"), str):
            errors.append(f"model-index[{i}].name must be a string")
        for j, result in enumerate(entry.get("results") or []):
            where = f"model-index[{i}].results[{j}]"
            if not isinstance((result.get("task") or {}).get("type"), str):
                errors.append(f"{where}.task.type is required")
            dataset = result.get("dataset") or {}
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                errors.append(f"{where}.dataset needs type and name")
            metrics = result.get("metrics")
            if not metrics:
                errors.append(f"{where}.metrics is empty")
            for k, metric in enumerate(metrics or []):
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float)):
                    errors.append(f"{where}.metrics[{k}] needs a string type and a number value")
    return errors


class _Repo:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.sha = hashlib.sha1(b"initial").hexdigest()
        self.pull_requests: dict[int, dict[str, bytes]] = {}  # number -> the files on refs/pr/<number>
        self.branches: dict[str, dict[str, bytes]] = {}  # name -> the files on that branch


class HubServer:
    def __init__(self, tokens=(TOKEN,)):
        self.tokens = set(tokens)
        self.repos: dict[str, _Repo] = {}
        self.fail_commits = False
        self.commit_log: list[dict] = []  # header of every applied commit, and whether a PR was asked for
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = None

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def writes(self) -> list[tuple[str, str]]:
        """Requests that could change state (everything but GET/HEAD and YAML validation)."""
        return [r for r in self.requests if r[0] == "POST" and not r[1].startswith("/api/validate-yaml")]

    def commit(self, repo_id: str, lines: list[dict], create_pr: bool = False, pull_request: int | None = None,
               branch: str | None = None) -> str:
        with self._lock:
            repo = self.repos[repo_id]
            files = dict(repo.files if pull_request is None and branch is None else
                         repo.pull_requests[pull_request] if branch is None else repo.branches[branch])
            summary = ""
            for line in lines:
                value = line.get("value", {})
                if line.get("key") == "header":
                    summary = value.get("summary", "")
                    self.commit_log.append({"repo": repo_id, "summary": summary, "create_pr": create_pr,
                                            "description": value.get("description", "")})
                elif line.get("key") == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line.get("key") == "deletedFile":
                    files.pop(value["path"], None)
                elif line.get("key") == "lfsFile":
                    raise ValueError("this test server takes regular uploads only")
            if pull_request is not None or branch is not None:
                if branch is None:
                    repo.pull_requests[pull_request] = files
                else:
                    repo.branches[branch] = files
                return hashlib.sha1(str(sorted(files)).encode()).hexdigest()
            repo.files = files
            repo.sha = hashlib.sha1((repo.sha + summary + str(sorted(files))).encode()
                                    + b"".join(files[p] for p in sorted(files))).hexdigest()
            return repo.sha


def _handler_for(server: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        # -- helpers ---------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, message: str, code: str | None = None, retry_after: int | None = None):
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
            self._json(status, {"error": message}, headers)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorized(self) -> bool:
            auth = self.headers.get("Authorization", "")
            return auth.startswith("Bearer ") and auth[len("Bearer "):] in server.tokens

        def _record(self):
            server.requests.append((self.command, urlparse(self.path).path))

        # -- verbs -----------------------------------------------------------------------------------
        def do_HEAD(self):
            self._record()
            self._get()

        def do_GET(self):
            self._record()
            self._get()

        def do_POST(self):
            self._record()
            body = self._body()
            path = unquote(urlparse(self.path).path)
            if path == "/api/validate-yaml":
                return self._validate_yaml(body)
            if not self._authorized():
                return self._error(401, "Invalid credentials in Authorization header")
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization'] or USER}/{payload['name']}"
                if repo_id in server.repos:  # the Hub names the existing repo's url, which create_repo reads
                    return self._json(409, {"error": "You already created this model repo",
                                             "url": f"{server.url}/{repo_id}"})
                server.repos[repo_id] = _Repo()
                return self._json(200, {"url": f"{server.url}/{repo_id}", "name": repo_id})
            b = _BRANCH.match(path)
            if b:
                repo = server.repos.get(b["repo"])
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                if b["branch"] in repo.branches:
                    return self._error(409, "Reference already exists")
                repo.branches[b["branch"]] = dict(repo.files)
                return self._json(200, {})
            d = _DISCUSSIONS.match(path)
            if d and d["repo"] in server.repos and d["num"] is None and json.loads(body).get("pullRequest"):
                repo = server.repos[d["repo"]]
                num = len(repo.pull_requests) + 1
                repo.pull_requests[num] = dict(repo.files)
                return self._json(200, {"num": num, "pullRequest": True})
            m = _API.match(path)
            if not m or m["repo"] not in server.repos:
                return self._error(404, "Repository not found", "RepoNotFound")
            branch = _branch(server.repos[m["repo"]], m)
            if branch is False:
                return self._error(404, f"Invalid rev id: {m['rev']}", "RevisionNotFound")
            if m["action"] == "preupload":
                files = json.loads(body)["files"]
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files]})
            if m["action"] == "commit":
                if server.fail_commits:  # Retry-After: 0 keeps the client's retries (5 of them) from sleeping 23 s
                    return self._error(500, "Internal Error: the storage backend failed while committing",
                                       retry_after=0)
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                create_pr = parse_qs(urlparse(self.path).query).get("create_pr", ["0"])[0] in ("1", "true", "True")
                ref = (m["rev"] or "main") + (m["rest"] or "")
                pr = int(ref.rsplit("/", 1)[1]) if ref.startswith("refs/pr/") else None
                if create_pr and pr is None:  # a commit that opens its pull request
                    repo = server.repos[m["repo"]]
                    pr = len(repo.pull_requests) + 1
                    repo.pull_requests[pr] = dict(repo.files)
                if pr is not None and pr not in server.repos[m["repo"]].pull_requests:
                    return self._error(404, f"Invalid rev id: {ref}", "RevisionNotFound")
                sha = server.commit(m["repo"], lines, create_pr or pr is not None, pr, branch if pr is None else None)
                answer = {"success": True, "commitOid": sha, "commitUrl": f"{server.url}/{m['repo']}/commit/{sha}"}
                if pr is not None:
                    answer["pullRequestUrl"] = f"{server.url}/{m['repo']}/discussions/{pr}"
                return self._json(200, answer)
            if m["action"] == "paths-info":
                return self._json(200, [])
            return self._error(404, f"unknown endpoint {path}")

        def _validate_yaml(self, body: bytes):
            content = json.loads(body)["content"]
            match = re.match(r"^---\n(.*?)\n---", content, re.S)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as exc:
                return self._json(400, {"error": f"Invalid YAML: {exc}"})
            errors = validate_card_metadata(metadata or {})
            if errors:
                return self._json(400, {"error": "; ".join(errors)})
            return self._json(200, {"errors": [], "warnings": []})

        def _get(self):
            path = unquote(urlparse(self.path).path)
            if path == "/api/whoami-v2":
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                return self._json(200, {"type": "user", "name": USER, "auth": {"accessToken": {"role": "write"}}})
            d = _DISCUSSIONS.match(path)
            if d and d["num"] and d["repo"] in server.repos and int(d["num"]) in server.repos[d["repo"]].pull_requests:
                return self._json(200, {
                    "title": "pull request", "num": int(d["num"]), "author": {"name": USER}, "status": "draft",
                    "createdAt": "2026-01-01T00:00:00.000Z", "repo": {"name": d["repo"], "type": "model"},
                    "isPullRequest": True, "events": [], "changes": {"base": "refs/heads/main"},
                    "filesWithConflicts": [], "diff": None})
            m = _API.match(path)
            if m:
                repo = server.repos.get(m["repo"])
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                files = _files_at(repo, m)
                if files is None:
                    return self._error(404, f"Invalid rev id: {m['rev']}{m['rest'] or ''}", "RevisionNotFound")
                if m["action"] == "tree":
                    return self._json(200, [{"type": "file", "path": p, "size": len(c), "oid": _git_oid(c)}
                                            for p, c in sorted(files.items())])
                return self._json(200, {"id": m["repo"], "modelId": m["repo"], "sha": repo.sha, "private": False,
                                        "siblings": [{"rfilename": p} for p in sorted(files)]})
            m = _RESOLVE.match(path)
            if m:
                repo = server.repos.get(m["repo"])
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                if m["rev"] not in ("main", repo.sha):
                    return self._error(404, f"Invalid rev id: {m['rev']}", "RevisionNotFound")
                content = repo.files.get(m["path"])
                headers = {"X-Repo-Commit": repo.sha}
                if content is None:
                    headers.update({"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"})
                    return self._send(404, b'{"error": "Entry not found"}', headers)
                headers["ETag"] = f'"{_git_oid(content)}"'
                return self._send(200, content, headers, content_type="application/octet-stream")
            return self._error(404, f"unknown endpoint {path}")

    return Handler


def _branch(repo: _Repo, match):
    """The branch a request's revision names: None for main, a sha or a pull request; False when it does not exist."""
    rev = match["rev"]
    if rev is None or rev in ("main", repo.sha, "refs"):  # "refs": refs/pr/<n>, unquoted
        return None
    return rev if rev in repo.branches else False


def _files_at(repo: _Repo, match) -> dict[str, bytes] | None:
    """The files at a request's revision (main, a branch or refs/pr/<n>); None when it does not exist."""
    branch = _branch(repo, match)
    if branch is False:
        return None
    if match["rev"] == "refs":
        pr = re.match(r"^/pr/(\d+)", match["rest"] or "")
        return repo.pull_requests.get(int(pr[1])) if pr else None
    return repo.files if branch is None else repo.branches[branch]


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
