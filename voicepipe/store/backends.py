"""Blob backends: the few primitive operations the artifact store needs, for a local directory and for S3.

Every piece of store semantics (hashing, sidecars, refs, memo, trees) lives once in `ArtifactStore`; a
backend only moves bytes under string keys. That is how both backends keep identical semantics.

Both backends guarantee that a key either holds a whole object or nothing:
- local: bytes go to `<root>/.tmp/` first, then `os.replace` (or `os.link` for create-if-absent);
- S3: a single PUT, or a multipart upload that only becomes visible at CompleteMultipartUpload (boto3 aborts
  the upload when a part fails).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from tqdm import tqdm

from voicepipe.errors import ConfigError, StoreError

CHUNK = 1024 * 1024
PROGRESS_MIN_BYTES = 64 * 1024 * 1024  # show a progress bar for transfers at least this large
TMP_MAX_AGE_S = 24 * 3600  # leftovers of killed local writers older than this are removed on open

ChunkCallback = Callable[[int], None]


def sha256_file(path: Path, on_chunk: ChunkCallback | None = None) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return h.hexdigest(), size


def _progress(total: int, desc: str) -> tqdm:
    # Small transfers never show a bar; large ones show one when stderr is a terminal (disable=None).
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False,
                disable=True if total < PROGRESS_MIN_BYTES else None)


class Backend(Protocol):
    """What `ArtifactStore` needs from a place that holds bytes under keys like `objects/ab/abcd…`."""

    url: str  # the store URL, e.g. file:///srv/store or s3://bucket/prefix
    on_chunk: ChunkCallback | None  # called after each transferred chunk (progress; tests interrupt with it)

    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def put_bytes(self, key: str, data: bytes, content_type: str = ..., if_absent: bool = ...) -> bool: ...
    def put_file(self, key: str, path: Path, size: int, content_type: str = ...) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def get_file(self, key: str, dest: Path) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def move(self, key: str, new_key: str) -> None: ...


# --------------------------------------------------------------------------------------------- local


class LocalBackend:
    """A directory on a local (or mounted) filesystem. The embedded default."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()
        self.on_chunk: ChunkCallback | None = None
        self._tmp = self.root / ".tmp"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot create directory ({e.strerror or e})") from None
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        now = time.time()
        for p in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > TMP_MAX_AGE_S:
                    p.unlink()

    def _path(self, key: str) -> Path:
        return self.root / key

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    @contextlib.contextmanager
    def _tmpfile(self) -> Iterator[tuple[IO[bytes], Path]]:
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="w-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _publish(self, tmp: Path, key: str, if_absent: bool) -> bool:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if if_absent:
            try:
                os.link(tmp, final)  # atomic create-if-absent: fails if the key exists
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                    raise
                if final.exists():  # filesystem without hard links: best effort
                    return False
                os.replace(tmp, final)
            return True
        os.replace(tmp, final)
        return True

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  if_absent: bool = False) -> bool:
        try:
            with self._tmpfile() as (f, tmp):
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                f.close()
                return self._publish(tmp, key, if_absent)
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot write {key} ({e.strerror or e})") from None

    def put_file(self, key: str, path: Path, size: int, content_type: str = "application/octet-stream") -> None:
        try:
            with self._tmpfile() as (f, tmp), open(path, "rb") as src, _progress(size, f"store {path.name}") as bar:
                while chunk := src.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                    if self.on_chunk:
                        self.on_chunk(len(chunk))
                f.flush()
                os.fsync(f.fileno())
                f.close()
                self._publish(tmp, key, if_absent=False)
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot write {key} from {path} ({e.strerror or e})") from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot read {key} ({e.strerror or e})") from None

    def get_file(self, key: str, dest: Path) -> bool:
        src = self._path(key)
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            return False
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as fi, open(dest, "wb") as fo, _progress(size, f"fetch {dest.name}") as bar:
                while chunk := fi.read(CHUNK):
                    fo.write(chunk)
                    bar.update(len(chunk))
                    if self.on_chunk:
                        self.on_chunk(len(chunk))
        except OSError as e:
            raise StoreError(f"store {self.url}: cannot read {key} into {dest} ({e.strerror or e})") from None
        return True

    def list(self, prefix: str) -> list[str]:
        # `prefix` is a key prefix (not necessarily a whole directory): walk the deepest directory it names.
        base = self._path(prefix) if prefix in ("", ".") or prefix.endswith("/") else self._path(prefix).parent
        if not base.is_dir():
            return []
        keys = []
        for p in base.rglob("*"):
            if p.is_file():
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix) and not key.startswith(".tmp/"):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def move(self, key: str, new_key: str) -> None:
        dst = self._path(new_key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.replace(self._path(key), dst)


# --------------------------------------------------------------------------------------------- S3


class S3Backend:
    """An S3-compatible bucket (MinIO in production) through boto3, with path-style addressing.

    Opening it checks the endpoint once (creating the bucket if missing) so a wrong endpoint or wrong credentials
    fail at once with one line naming the endpoint, after botocore's bounded retries.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None, region: str = "us-east-1",
                 max_attempts: int = 3, connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 multipart_threshold: int = 64 * 1024 * 1024, multipart_chunksize: int = 16 * 1024 * 1024,
                 max_concurrency: int = 4, create_bucket: bool = True) -> None:
        self._args = {"bucket": bucket, "prefix": prefix, "endpoint_url": endpoint_url, "access_key": access_key,
                      "secret_key": secret_key, "region": region, "max_attempts": max_attempts,
                      "connect_timeout": connect_timeout, "read_timeout": read_timeout,
                      "multipart_threshold": multipart_threshold, "multipart_chunksize": multipart_chunksize,
                      "max_concurrency": max_concurrency}
        self._connect(**self._args)
        self._check_bucket(create_bucket, region)

    def _connect(self, *, bucket: str, prefix: str, endpoint_url: str | None, access_key: str | None,
                 secret_key: str | None, region: str, max_attempts: int, connect_timeout: float, read_timeout: float,
                 multipart_threshold: int, multipart_chunksize: int, max_concurrency: int) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint = endpoint_url or f"the default AWS endpoint for {region}"
        self.on_chunk: ChunkCallback | None = None
        self.max_attempts = max_attempts
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": max_attempts, "mode": "standard"},  # incl. the first try
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # boto3 >= 1.36 adds CRC checksums by default; some S3-compatible servers reject them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                         region_name=region)
        try:
            self.client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as e:  # botocore: "Invalid endpoint: …"
            raise ConfigError(f"S3 endpoint {endpoint_url}: {e} (expected e.g. http://minio:9000)") from None
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunksize, max_concurrency=max_concurrency)

    # Picklable (Dask workers, Prefect task inputs): the boto3 client is rebuilt from the arguments, no re-check.
    def __getstate__(self) -> dict[str, Any]:
        return dict(self._args)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._args = dict(state)
        self._connect(**state)

    # -- errors

    def _fail(self, e: Exception, what: str) -> StoreError:
        """One line naming the endpoint and what failed, for any boto error."""
        from botocore.exceptions import ClientError, ConnectionError, NoCredentialsError, ReadTimeoutError

        if isinstance(e, NoCredentialsError):
            return StoreError(f"S3 endpoint {self.endpoint}: no credentials (set VOICEPIPE_S3_ACCESS_KEY and "
                              f"VOICEPIPE_S3_SECRET_KEY) while trying to {what}")
        if isinstance(e, ConnectionError | ReadTimeoutError):
            return StoreError(f"S3 endpoint {self.endpoint}: unreachable after {self.max_attempts} attempts "
                              f"while trying to {what} ({e.__class__.__name__})")
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", "?"))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                        "ExpiredToken", "403", "Forbidden") or status == 403:
                return StoreError(f"S3 endpoint {self.endpoint}: credentials rejected ({code}) while trying to "
                                  f"{what}; check VOICEPIPE_S3_ACCESS_KEY / VOICEPIPE_S3_SECRET_KEY")
            return StoreError(f"S3 endpoint {self.endpoint}: {code} (HTTP {status}) while trying to {what}")
        return StoreError(f"S3 endpoint {self.endpoint}: {e.__class__.__name__} while trying to {what}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}")

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as e:
            raise self._fail(e, what) from None
        except S3UploadFailedError as e:
            # boto3 flattens the ClientError of a failed upload into a message; keep it on one line.
            raise StoreError(f"S3 endpoint {self.endpoint}: {what} failed: {str(e).splitlines()[0]}") from None

    def _check_bucket(self, create: bool, region: str) -> None:
        from botocore.exceptions import ClientError

        with self._errors(f"open bucket {self.bucket}"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status != 404 or not create:
                    raise
            kwargs: dict[str, Any] = {}
            if region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self.client.create_bucket(Bucket=self.bucket, **kwargs)
            except ClientError as e:  # created meanwhile by another process
                if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # -- keys

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(f"check {self.uri(key)}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  if_absent: bool = False) -> bool:
        # create-if-absent is check-then-put here (not every S3-compatible server has conditional writes);
        # callers only use it for content-addressed data where a race writes identical bytes.
        if if_absent and self.exists(key):
            return False
        with self._errors(f"write {self.uri(key)}"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        return True

    def _callback(self, bar: tqdm) -> ChunkCallback:
        def cb(n: int) -> None:
            bar.update(n)
            if self.on_chunk:
                self.on_chunk(n)
        return cb

    def put_file(self, key: str, path: Path, size: int, content_type: str = "application/octet-stream") -> None:
        with self._errors(f"upload {path} to {self.uri(key)}"), _progress(size, f"upload {path.name}") as bar:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer,
                                    ExtraArgs={"ContentType": content_type}, Callback=self._callback(bar))

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        with self._errors(f"read {self.uri(key)}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def get_file(self, key: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(f"download {self.uri(key)}"):
            try:
                size = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f, _progress(size, f"fetch {dest.name}") as bar:
                self.client.download_fileobj(self.bucket, self._key(key), f, Config=self.transfer,
                                             Callback=self._callback(bar))
        return True

    def list(self, prefix: str) -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        with self._errors(f"list {self.uri(prefix)}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                             Prefix=self._key(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(f"delete {self.uri(key)}"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def move(self, key: str, new_key: str) -> None:
        with self._errors(f"move {self.uri(key)} to {self.uri(new_key)}"):
            # managed copy: multipart for objects over 5 GB, where a single CopyObject is refused
            self.client.copy({"Bucket": self.bucket, "Key": self._key(key)}, self.bucket, self._key(new_key),
                             Config=self.transfer)
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def new_tmp_name(prefix: str = "") -> str:
    """A unique, time-sortable name (used for refs-log entries)."""
    return f"{prefix}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def copy_tree_atomic(src: Path, dest: Path) -> None:
    """Move a fully written directory `src` into place at `dest` (which must not exist or be empty)."""
    if dest.exists():
        if any(dest.iterdir()):
            raise StoreError(f"destination {dest}: exists and is not empty")
        dest.rmdir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError:
        shutil.move(str(src), str(dest))
