"""Input files given from where the user is, not from the worker's disk (a Prefect UI form, the API):

    store:<ref name | sha256 | unique sha prefix>   an object in the artifact store (`voicepipe store put clip.wav
                                                     --ref enroll/alice` puts one there)
    s3://bucket/key                                  an object in the S3 store's endpoint (MinIO), same credentials
    http(s)://…                                      a download
    /path/on/the/worker                              used as it is

`fetch_input` turns any of them into a local file, cached by content under `<home>/inputs/<sha256>/<name>`, so a
worker (or a Dask worker) that fetches the same input again reuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from voicepipe.errors import InputError, StoreError

REMOTE = ("store:", "s3://", "http://", "https://")


def is_remote(ref: str) -> bool:
    """Whether `ref` names an input that must be fetched (store:, s3://, http(s)://)."""
    return str(ref).startswith(REMOTE)


def _settings(settings: Any) -> Any:
    if settings is not None:
        return settings
    from voicepipe.config import load_settings

    return load_settings()


def _cache(tmp: Path, name: str, settings: Any) -> Path:
    """Move a fetched file into the content-addressed input cache; returns its path there."""
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"
    dest = Path(settings.home) / "inputs" / h.hexdigest() / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        tmp.unlink(missing_ok=True)
    else:
        os.replace(tmp, dest)
    return dest


def fetch_input(ref: str, settings: Any = None, store: Any = None, timeout_s: float = 60.0,
                what: str = "input") -> Path:
    """A local file for `ref` (see the module docstring). InputError names `what` and `ref` when it cannot."""
    ref = str(ref).strip()
    if not is_remote(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise InputError(f"{what} {ref}: no such file (on this worker: give an s3:// or http(s):// URL, or "
                             f"store:<ref> after `voicepipe store put FILE --ref NAME`)")
        return path
    settings = _settings(settings)
    Path(settings.home).mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", dir=settings.home)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if ref.startswith("store:"):
            from voicepipe.store import open_store

            st = store or open_store(settings)
            try:
                sha = st.resolve(ref[len("store:"):])
                name = (st.meta(sha).get("name") or sha).rsplit("/", 1)[-1]
                st.get_file(sha, tmp)
            except StoreError as e:
                raise InputError(f"{what} {ref}: {e}") from None
        elif ref.startswith("s3://"):
            name = _fetch_s3(ref, tmp, settings, what)
        else:
            name = _fetch_http(ref, tmp, timeout_s, what)
        return _cache(tmp, name, settings)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_s3(ref: str, dest: Path, settings: Any, what: str) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    from voicepipe.store.backends import S3Backend

    u = urlparse(ref)
    key = unquote(u.path.lstrip("/"))
    if not u.netloc or not key:
        raise InputError(f"{what} {ref}: expected s3://bucket/key")
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    backend = S3Backend.__new__(S3Backend)  # a client on the configured endpoint; the bucket need not be ours
    backend._connect(bucket=u.netloc, prefix="", endpoint_url=settings.s3_endpoint_url or None,
                     access_key=settings.s3_access_key or None, secret_key=secret, region=settings.s3_region,
                     max_attempts=settings.s3_max_attempts, connect_timeout=settings.s3_connect_timeout,
                     read_timeout=60.0, multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
    try:
        backend.client.download_file(u.netloc, key, str(dest))
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", "?"))
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise InputError(f"{what} {ref}: no such object at {backend.endpoint}") from None
        raise InputError(f"{what} {ref}: {backend._fail(e, 'download it')}") from None
    except BotoCoreError as e:
        raise InputError(f"{what} {ref}: {backend._fail(e, 'download it')}") from None
    return key.rsplit("/", 1)[-1]


def _fetch_http(ref: str, dest: Path, timeout_s: float, what: str) -> str:
    import httpx

    try:
        with httpx.stream("GET", ref, timeout=timeout_s, follow_redirects=True) as r:
            if r.status_code >= 400:
                raise InputError(f"{what} {ref}: HTTP {r.status_code}")
            with open(dest, "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as e:
        raise InputError(f"{what} {ref}: {type(e).__name__}: {e}") from None
    return unquote(urlparse(ref).path.rstrip("/").rsplit("/", 1)[-1]) or "download"


def localize(refs: list[str], settings: Any = None, store: Any = None, what: str = "input") -> list[str]:
    """`fetch_input` of each ref, as local path strings (an existing local path comes back unchanged)."""
    return [str(fetch_input(r, settings, store, what=what)) for r in refs]


__all__ = ["fetch_input", "is_remote", "localize"]
