"""The content-addressed artifact store: objects, sidecars, lineage, trees, named refs and the step memo.

Layout under the store root (a directory, or `s3://bucket/prefix`):

    objects/ab/<sha256>              the bytes, named by their sha256
    quarantine/<sha256>-<time>       objects whose bytes failed verification on read (moved out of objects/)
    meta/ab/<sha256>.json            sidecar: step, inputs, params, code_version, created, name, size, content_type
    refs/<name>.json                 named mutable pointer (current value)
    refs-log/<name>/<time>-<id>.json every value a ref ever had (append-only history)
    memo/<step>/<key>.json           step memo: input-hash key -> output sha256

A sidecar is written once, by the first producer of those bytes (identical bytes produced again by another step
keep the first record). A directory is stored as its files plus a tree manifest object whose sha names the tree.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from voicepipe.errors import ConfigError, StoreError
from voicepipe.store.backends import Backend, LocalBackend, S3Backend, copy_tree_atomic, new_tmp_name, sha256_file

TREE_CONTENT_TYPE = "application/vnd.voicepipe.tree+json"
TREE_FORMAT = "voicepipe.tree/v1"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+=-]*$")  # memo keys used verbatim (else hashed)
# A ref/step segment: any printable text without '/' or '\\', not starting with '.' or a space, not ending in a space
_NAME_SEGMENT_RE = re.compile(r"^(?![. ])[^\x00-\x1f\x7f/\\]{1,200}(?<! )$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class ArtifactRef:
    """What a put returns: the content hash, its size in bytes and where the object lives."""

    sha256: str
    size: int
    uri: str

    def __str__(self) -> str:
        return self.sha256


@functools.cache
def code_version() -> dict[str, str | None]:
    """voicepipe's version and the git commit of its source tree (or $VOICEPIPE_GIT_COMMIT when set)."""
    from voicepipe import __version__

    commit = os.environ.get("VOICEPIPE_GIT_COMMIT")
    if not commit:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                 capture_output=True, text=True, timeout=5)
            commit = out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"voicepipe": __version__, "git_commit": commit or None}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _check_sha(sha: Any, what: str = "object") -> str:
    sha = str(sha.sha256 if isinstance(sha, ArtifactRef) else sha).lower()
    if not _SHA_RE.match(sha):
        raise StoreError(f"{what} {sha!r}: not a sha256 hex digest")
    return sha


def _check_name(name: str, what: str) -> str:
    """A ref name or memo step: '/'-separated segments of printable text; no '.'/'..' segments, no empty ones."""
    parts = name.strip("/").split("/") if isinstance(name, str) else []
    if not parts or not all(_NAME_SEGMENT_RE.match(p) for p in parts):
        raise StoreError(f"{what} {name!r}: use '/'-separated segments of printable text "
                         "(no empty, '.' or '..' segment, none starting with '.')")
    return "/".join(parts)


def _json_bytes(obj: Any, what: str, lenient: bool = False) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=None, separators=(",", ":"),
                          default=str if lenient else None).encode()
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what}: not JSON-serialisable ({e})") from None


def _pmap(fn: Any, items: list[Any], workers: int = 8) -> list[Any]:
    """`[fn(x) for x in items]` on a few threads (S3 round trips dominate for many small objects)."""
    if len(items) < 4:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


class ArtifactStore:
    """Content-addressed artifacts with provenance, on any `Backend`. Create one with `open_store`."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.url = backend.url

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ------------------------------------------------------------------ keys

    @staticmethod
    def _obj_key(sha: str) -> str:
        return f"objects/{sha[:2]}/{sha}"

    @staticmethod
    def _meta_key(sha: str) -> str:
        return f"meta/{sha[:2]}/{sha}.json"

    # ------------------------------------------------------------------ writing

    def _sidecar(self, sha: str, size: int, *, step: str, inputs: Iterable[Any], params: Mapping[str, Any] | None,
                 name: str | None, content_type: str, kind: str) -> dict[str, Any]:
        if not step or not isinstance(step, str):
            raise StoreError(f"artifact {name or sha}: a producing step name is required")
        return {
            "sha256": sha,
            "size": size,
            "name": name,
            "step": step,
            "inputs": [_check_sha(i, f"input of {step}") for i in inputs],
            "params": json.loads(_json_bytes(dict(params or {}), f"params of step {step}", lenient=True)),
            "code_version": code_version(),
            "created": _now(),
            "content_type": content_type,
            "kind": kind,
        }

    def _write_sidecar(self, meta: dict[str, Any]) -> None:
        # First producer wins: create-if-absent keeps the original provenance of identical bytes, also when the
        # bytes come back after a quarantine (the sidecar stays where it was).
        self.backend.put_bytes(self._meta_key(meta["sha256"]), _json_bytes(meta, "sidecar"),
                               "application/json", if_absent=True)

    def put_bytes(self, data: bytes, *, step: str, inputs: Iterable[Any] = (), params: Mapping[str, Any] | None = None,
                  name: str | None = None, content_type: str = "application/octet-stream",
                  _kind: str = "blob") -> ArtifactRef:
        """Store bytes; returns their ArtifactRef. Storing the same bytes again is a cheap no-op."""
        data = bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        meta = self._sidecar(sha, len(data), step=step, inputs=inputs, params=params, name=name,
                             content_type=content_type, kind=_kind)
        key = self._obj_key(sha)
        self.backend.put_bytes(key, data, content_type, if_absent=True)
        self._write_sidecar(meta)
        return ArtifactRef(sha, len(data), self.backend.uri(key))

    def put_file(self, path: str | Path, *, step: str, inputs: Iterable[Any] = (),
                 params: Mapping[str, Any] | None = None, name: str | None = None,
                 content_type: str | None = None) -> ArtifactRef:
        """Store a file's content (multipart upload on S3 for large files). `name` defaults to the file name."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"file {path}: not found or not a regular file")
        if content_type is None:
            import mimetypes

            content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            before = path.stat()
            sha, size = sha256_file(path)
        except OSError as e:
            raise StoreError(f"file {path}: unreadable ({e.strerror or e})") from None
        meta = self._sidecar(sha, size, step=step, inputs=inputs, params=params, name=name or path.name,
                             content_type=content_type, kind="blob")
        key = self._obj_key(sha)
        if not self.backend.exists(key):
            # The file is read twice (hash, then upload under that hash): if it changed in between, the stored
            # bytes would not match their name, so take them back out and say so.
            self.backend.put_file(key, path, size, content_type)
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self.backend.delete(key)
                raise StoreError(f"file {path}: changed while it was being stored; store it again once written")
        self._write_sidecar(meta)
        return ArtifactRef(sha, size, self.backend.uri(key))

    def put_json(self, obj: Any, *, step: str, inputs: Iterable[Any] = (), params: Mapping[str, Any] | None = None,
                 name: str | None = None) -> ArtifactRef:
        """Store a JSON document (canonical form: sorted keys, compact), so equal documents share one sha."""
        return self.put_bytes(_json_bytes(obj, f"json artifact {name or ''} of step {step}".replace("  ", " ")),
                              step=step, inputs=inputs, params=params, name=name, content_type="application/json")

    def put_dir(self, directory: str | Path, *, step: str, inputs: Iterable[Any] = (),
                params: Mapping[str, Any] | None = None, name: str | None = None) -> ArtifactRef:
        """Store every file under `directory` and a tree manifest; the manifest's sha names the directory.

        Empty directories are not recorded. Each file's sidecar names its relative path and carries the same
        step and inputs; the manifest carries the params.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise StoreError(f"directory {directory}: not found or not a directory")
        inputs = [_check_sha(i, f"input of {step}") for i in inputs]
        paths = [p for p in sorted(directory.rglob("*")) if p.is_file()]

        def put_one(p: Path) -> dict[str, Any]:
            rel = p.relative_to(directory).as_posix()
            ref = self.put_file(p, step=step, inputs=inputs, name=rel)
            return {"path": rel, "sha256": ref.sha256, "size": ref.size}

        files = _pmap(put_one, paths)
        manifest = {"format": TREE_FORMAT, "files": files}
        return self.put_bytes(_json_bytes(manifest, "tree manifest"), step=step, inputs=inputs, params=params,
                              name=name or directory.name, content_type=TREE_CONTENT_TYPE, _kind="tree")

    # ------------------------------------------------------------------ reading

    def exists(self, sha: str | ArtifactRef) -> bool:
        """Whether the object is in the store."""
        return self.backend.exists(self._obj_key(_check_sha(sha)))

    def _corrupt(self, sha: str, got: str) -> StoreError:
        # Move the bad bytes out of the way (kept for inspection) so that storing the content again repairs it.
        self.backend.move(self._obj_key(sha), f"quarantine/{sha}-{new_tmp_name()}")
        return StoreError(f"object {sha} in {self.url}: corrupted (content hashes to {got[:12]}…); moved to "
                          "quarantine/, store it again to repair")

    def _missing(self, sha: str) -> StoreError:
        return StoreError(f"object {sha} not found in store {self.url}")

    def get_bytes(self, sha: str | ArtifactRef) -> bytes:
        """The object's bytes, hash-verified."""
        sha = _check_sha(sha)
        data = self.backend.get_bytes(self._obj_key(sha))
        if data is None:
            raise self._missing(sha)
        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise self._corrupt(sha, got)
        return data

    def get_json(self, sha: str | ArtifactRef) -> Any:
        """A stored JSON document, parsed."""
        sha = _check_sha(sha)
        try:
            return json.loads(self.get_bytes(sha))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"object {sha} in {self.url}: not JSON ({e.__class__.__name__})") from None

    def get_file(self, sha: str | ArtifactRef, dest: str | Path) -> Path:
        """Write the object to `dest` (a file path, or an existing directory: then `<dir>/<name or sha>`).

        The bytes land in a temporary file next to `dest`, are hash-verified, then renamed into place: a corrupted
        object raises StoreError and leaves `dest` untouched.
        """
        sha = _check_sha(sha)
        dest = Path(dest)
        if dest.is_dir():
            name = (self._read_meta(sha) or {}).get("name")
            dest = dest / (Path(name).name if name else sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if not self.backend.get_file(self._obj_key(sha), tmp):
                raise self._missing(sha)
            got, _ = sha256_file(tmp)
            if got != sha:
                raise self._corrupt(sha, got)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def _read_meta(self, sha: str) -> dict[str, Any] | None:
        raw = self.backend.get_bytes(self._meta_key(sha))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StoreError(f"sidecar of {sha} in {self.url}: not valid JSON") from None

    def meta(self, sha: str | ArtifactRef) -> dict[str, Any]:
        """The object's sidecar (step, inputs, params, code_version, created, name, size, content_type, kind)."""
        sha = _check_sha(sha)
        meta = self._read_meta(sha)
        if meta is None:
            raise StoreError(f"object {sha}: no sidecar in store {self.url}" if self.exists(sha)
                             else f"object {sha} not found in store {self.url}")
        return meta

    def lineage(self, sha: str | ArtifactRef) -> list[dict[str, Any]]:
        """Sidecars of `sha` and, breadth-first, of everything it was made from, back to the roots.

        Each entry is a sidecar plus `depth` (0 for `sha` itself). An input whose sidecar is absent appears as
        `{"sha256": …, "missing": True, "depth": …}` so a broken chain shows where it breaks.
        """
        start = _check_sha(sha)
        out: list[dict[str, Any]] = []
        seen = {start}
        frontier = [start]
        depth = 0
        while frontier:
            nxt: list[str] = []
            for s, meta in zip(frontier, _pmap(self._read_meta, frontier), strict=True):
                if meta is None:
                    if depth == 0:
                        raise self._missing(s)
                    out.append({"sha256": s, "missing": True, "depth": depth})
                    continue
                out.append({**meta, "depth": depth})
                for i in meta.get("inputs", []):
                    if i not in seen:
                        seen.add(i)
                        nxt.append(i)
            frontier = nxt
            depth += 1
        return out

    def get_dir(self, sha: str | ArtifactRef, dest: str | Path, *, overwrite: bool = False) -> Path:
        """Rebuild a stored directory at `dest` (must be absent or empty unless `overwrite`), every file verified.

        Files are assembled in a temporary sibling directory and moved into place at the end, so `dest` never
        holds a partial tree.
        """
        sha = _check_sha(sha)
        dest = Path(dest)
        try:
            manifest = json.loads(self.get_bytes(sha))
        except (UnicodeDecodeError, json.JSONDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("format") != TREE_FORMAT:
            raise StoreError(f"object {sha} in {self.url}: not a directory tree (stored with put_dir?)")
        if dest.exists() and not overwrite and (not dest.is_dir() or any(dest.iterdir())):
            raise StoreError(f"destination {dest}: exists and is not empty")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
        try:
            for entry in manifest["files"]:
                rel = Path(entry["path"])
                if rel.is_absolute() or ".." in rel.parts:
                    raise StoreError(f"tree {sha}: unsafe path {entry['path']!r}")
            _pmap(lambda e: self.get_file(e["sha256"], tmp / e["path"]), manifest["files"])
            if overwrite and dest.exists():
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
            copy_tree_atomic(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ------------------------------------------------------------------ refs

    def set_ref(self, name: str, sha: str | ArtifactRef, extra: Mapping[str, Any] | None = None, *,
                if_absent: bool = False) -> dict[str, Any]:
        """Point the named ref at an existing object; the previous value stays in the ref's history.

        `if_absent=True` writes the ref only if it was never set (a record written once, e.g. the run that built
        a corpus version) and otherwise returns the existing value untouched (compare its `sha`). On S3 this is
        check-then-write: two writers racing on a new name can both believe they wrote it; the last one stays.
        """
        name = _check_name(name, "ref name")
        sha = _check_sha(sha)
        if not self.exists(sha):
            raise StoreError(f"ref {name}: object {sha} not found in store {self.url}")
        previous = self.get_ref(name)
        if if_absent and previous is not None:
            return previous
        value = {
            "name": name,
            "sha": sha,
            "extra": json.loads(_json_bytes(dict(extra or {}), f"extra of ref {name}", lenient=True)),
            "set_at": _now(),
            "previous": previous["sha"] if previous else None,
            "code_version": code_version(),
        }
        body = _json_bytes(value, f"ref {name}")
        self.backend.put_bytes(f"refs-log/{name}/{new_tmp_name()}.json", body, "application/json")
        self.backend.put_bytes(f"refs/{name}.json", body, "application/json")
        return value

    def get_ref(self, name: str) -> dict[str, Any] | None:
        """The ref's current value (`name`, `sha`, `extra`, `set_at`, `previous`), or None if never set."""
        name = _check_name(name, "ref name")
        raw = self.backend.get_bytes(f"refs/{name}.json")
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise StoreError(f"ref {name} in {self.url}: not valid JSON") from None

    def list_refs(self, prefix: str = "") -> list[dict[str, Any]]:
        """Current values of every ref whose name starts with `prefix` (e.g. 'voices/'), sorted by name."""
        prefix = prefix.lstrip("/")
        if prefix and not all(_NAME_SEGMENT_RE.match(p) for p in prefix.rstrip("/").split("/")):
            raise StoreError(f"ref prefix {prefix!r}: use '/'-separated segments of printable text")
        out = []
        for key in self.backend.list(f"refs/{prefix}"):
            if key.endswith(".json"):
                ref = self.get_ref(key[len("refs/"):-len(".json")])
                if ref is not None:
                    out.append(ref)
        return sorted(out, key=lambda r: r["name"])

    def ref_history(self, name: str) -> list[dict[str, Any]]:
        """Every value the ref has had, oldest first (from its refs-log)."""
        name = _check_name(name, "ref name")
        out = []
        for key in self.backend.list(f"refs-log/{name}/"):
            if key.count("/") == name.count("/") + 2:  # only this ref's entries, not deeper refs' logs
                raw = self.backend.get_bytes(key)
                if raw is not None:
                    out.append(json.loads(raw))
        return out

    # ------------------------------------------------------------------ names people type

    def resolve(self, what: str) -> str:
        """The sha256 named by `what`: a full sha256, a ref name, or a unique hex prefix (at least 4 digits) of an
        object's sha256 (as printed in logs and reports). Raises StoreError naming `what` when it names nothing
        or, for a prefix, more than one object."""
        what = str(what).strip()
        low = what.lower()
        if _SHA_RE.match(low):
            return low
        if what and not what.startswith("/") and ".." not in what.split("/"):
            try:
                ref = self.get_ref(what)
            except StoreError:
                ref = None
            if ref is not None:
                return ref["sha"]
        if not re.fullmatch(r"[0-9a-f]{4,63}", low):
            raise StoreError(f"{what!r}: neither a sha256, a unique sha256 prefix (4+ hex digits) nor a ref "
                             f"in store {self.url}")
        matches = [k.rsplit("/", 1)[-1] for k in self.backend.list(f"objects/{low[:2]}/{low}")]
        matches = sorted({m for m in matches if _SHA_RE.match(m)})
        if not matches:
            raise StoreError(f"{what}: no object in store {self.url} has a sha256 starting with it (nor a ref)")
        if len(matches) > 1:
            shown = ", ".join(m[:16] for m in matches[:5])
            raise StoreError(f"{what}: ambiguous sha256 prefix in store {self.url} ({len(matches)} objects: "
                             f"{shown}{', …' if len(matches) > 5 else ''}); give more digits")
        return matches[0]

    # ------------------------------------------------------------------ memo

    @staticmethod
    def _memo_key(step: str, key: str) -> str:
        step = _check_name(step, "memo step")
        key = str(key)
        safe = key if _SEGMENT_RE.match(key) and len(key) <= 200 else hashlib.sha256(key.encode()).hexdigest()
        return f"memo/{step}/{safe}.json"

    def memo_get(self, step: str, key: str) -> str | None:
        """The sha a step produced for this input key, if recorded and the object is still in the store."""
        raw = self.backend.get_bytes(self._memo_key(step, key))
        if raw is None:
            return None
        try:
            sha = json.loads(raw)["sha"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return None  # an unreadable memo entry is a cache miss, never an error
        return sha if isinstance(sha, str) and _SHA_RE.match(sha) and self.exists(sha) else None

    def memo_put(self, step: str, key: str, sha: str | ArtifactRef) -> None:
        """Record that `step` with input key `key` produced object `sha` (which must exist)."""
        sha = _check_sha(sha)
        if not self.exists(sha):
            raise StoreError(f"memo {step}/{key}: object {sha} not found in store {self.url}")
        body = _json_bytes({"step": step, "key": str(key), "sha": sha, "created": _now()}, f"memo {step}")
        self.backend.put_bytes(self._memo_key(step, key), body, "application/json")


# ---------------------------------------------------------------------- opening


def open_store(url_or_settings: Any = None, **backend_options: Any) -> ArtifactStore:
    """Open the artifact store named by a URL, a path, or a `Settings` (its `resolved_store_url`).

    `file:///abs/dir` or a bare path -> local directory; `s3://bucket[/prefix]` -> S3/MinIO with the endpoint,
    credentials and region from settings (given, or loaded from VOICEPIPE_* env when a URL string is given).
    `backend_options` go to the backend (e.g. `multipart_threshold=` for S3). Unknown schemes raise ConfigError.
    """
    from voicepipe.config import Settings, load_settings

    if isinstance(url_or_settings, Settings):
        settings, url = url_or_settings, url_or_settings.resolved_store_url
    else:
        settings = load_settings()
        url = str(url_or_settings) if url_or_settings not in (None, "") else settings.resolved_store_url

    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # bare path
        return ArtifactStore(LocalBackend(Path(url).expanduser().resolve(), **backend_options))
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"store URL {url}: file URLs need an absolute path (file:///abs/dir)")
        return ArtifactStore(LocalBackend(Path(unquote(parsed.path)), **backend_options))
    if scheme == "s3":
        bucket = parsed.netloc
        if not _BUCKET_RE.match(bucket or ""):
            raise ConfigError(f"store URL {url}: {bucket!r} is not a valid S3 bucket name")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        options: dict[str, Any] = {
            "endpoint_url": settings.s3_endpoint_url or None,
            "access_key": settings.s3_access_key or None,
            "secret_key": secret,
            "region": settings.s3_region,
            "max_attempts": settings.s3_max_attempts,
            "connect_timeout": settings.s3_connect_timeout,
        }
        options.update(backend_options)
        return ArtifactStore(S3Backend(bucket, parsed.path.strip("/"), **options))
    raise ConfigError(f"store URL {url}: unknown scheme {scheme!r} (use file:///abs/dir, a path, or s3://bucket/prefix)")
