"""Links to stored objects that a browser can follow (Prefect UI artifacts, reports): never `s3://` URIs.

    browser_link(store, sha, name="report.html", settings=settings)
    tree_link(store, tree_sha, "report.html", settings=settings)     # relative links inside the tree keep working

Which link, in order:
1. `settings.link_base_url` set (the store relay as browsers reach it, `voicepipe store serve` or the relay in
   infra/): `<base>/files/<sha>/<name>` and `<base>/trees/<tree sha>/<path>`. Permanent, and a page served from a
   tree resolves its relative links (report.html -> metrics.png) inside the same tree.
2. an S3 store: a presigned GET URL (`settings.link_expires_s`, at most 7 days), signed for
   `settings.s3_public_endpoint_url` (the endpoint as browsers reach it; default the workers' endpoint), served
   inline with the object's content type.
3. a local store: the object's `file://` URI.
"""

from __future__ import annotations

import mimetypes
from typing import Any
from urllib.parse import quote

from voicepipe.errors import StoreError

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from voicepipe.config import load_settings

    return load_settings()


def _name_and_type(store: Any, sha: str, name: str | None) -> tuple[str, str]:
    meta: dict[str, Any] = {}
    try:
        meta = store.meta(sha)
    except StoreError:
        pass
    name = name or (meta.get("name") or sha).rsplit("/", 1)[-1]
    ctype = meta.get("content_type") or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") and "charset" not in ctype:
        ctype += "; charset=utf-8"
    return name, ctype


def presign(store: Any, sha: str, name: str, content_type: str, settings: Any = None) -> str:
    """A presigned GET URL of an object in an S3 store, for the endpoint browsers use."""
    backend = store.backend
    s = _settings(settings)
    args = dict(backend._args)
    public = s.s3_public_endpoint_url or args.get("endpoint_url")
    client = backend.client
    if public and public != args.get("endpoint_url"):
        from voicepipe.store.backends import S3Backend

        other = S3Backend.__new__(S3Backend)  # a client for the public endpoint; no bucket check from here
        other._connect(**{**args, "endpoint_url": public})
        client = other.client
    expires = max(1, min(int(s.link_expires_s), MAX_PRESIGN_S))
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": backend.bucket, "Key": backend._key(store._obj_key(sha)),
                "ResponseContentType": content_type,
                "ResponseContentDisposition": f"inline; filename=\"{name.replace(chr(34), '')}\""},
        ExpiresIn=expires,
    )


def browser_link(store: Any, sha: str, name: str | None = None, settings: Any = None) -> str:
    """A URL a browser can open for the stored object `sha` (see the module docstring for which kind)."""
    sha = store.resolve(sha)
    s = _settings(settings)
    name, ctype = _name_and_type(store, sha, name)
    if s.link_base_url:
        return f"{s.link_base_url.rstrip('/')}/files/{sha}/{quote(name)}"
    if hasattr(store.backend, "bucket"):
        return presign(store, sha, name, ctype, s)
    return store.backend.uri(store._obj_key(sha))


def tree_entry(store: Any, tree_sha: str, path: str) -> str:
    """The sha256 of the file at `path` inside a stored directory tree."""
    manifest = store.get_json(tree_sha)
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise StoreError(f"object {tree_sha}: not a directory tree")
    for entry in manifest["files"]:
        if entry["path"] == path:
            return entry["sha256"]
    raise StoreError(f"tree {tree_sha[:16]}: no file {path!r}")


def tree_link(store: Any, tree_sha: str, path: str, settings: Any = None) -> str:
    """A URL for the file at `path` in a stored tree; through the relay, its relative links keep working."""
    tree_sha = store.resolve(tree_sha)
    s = _settings(settings)
    if s.link_base_url:
        return f"{s.link_base_url.rstrip('/')}/trees/{tree_sha}/{quote(path)}"
    return browser_link(store, tree_entry(store, tree_sha, path), path.rsplit("/", 1)[-1], s)
