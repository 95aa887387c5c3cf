"""Step 1, fetch: list episodes from feeds, local folders and S3 prefixes; download enclosures safely.

Downloads resume (HTTP Range) after a dropped connection, retry with backoff, stop at a size limit, and
refuse HTML pages posing as audio. Every failure is an `InputError` whose message names the input and the
reason; the caller records it in `rejects.jsonl` and carries on with the other episodes.
"""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from voicepipe import __version__
from voicepipe.errors import InputError

# sent with every feed and episode request: podcast hosts and their CDNs answer clients that name themselves (some
# refuse a library's default agent), and a host's logs can tell voicepipe's fetches apart
USER_AGENT = f"voicepipe/{__version__} (podcast corpus builder)"
HEADERS = {"User-Agent": USER_AGENT, "Accept": "*/*"}

AUDIO_EXT = {".mp3", ".m4a", ".aac", ".wav", ".flac", ".ogg", ".opus", ".webm", ".mp4"}


class EpisodeSource(BaseModel):
    """Where one episode comes from, before it is fetched."""

    id: str  # stable id: feed guid, file path relative to its folder, or S3 key
    title: str = ""
    url: str  # http(s) URL, local path, or s3://bucket/key
    published: str | None = None  # ISO date
    declared_bytes: int | None = None
    origin: str = ""  # the feed / folder / prefix it was listed from


class SourceReject(BaseModel):
    """A source that could not be listed at all (e.g. malformed feed XML)."""

    source: str
    reason: str


def _slug(text: str) -> str:
    """A file-safe id of at most 80 characters. One longer than that ends in a hash of the whole text: feeds whose
    guids are long URLs differ only at the end (".../episode-12-part-1", "...-part-2"), and two episodes cut to the
    same id would be taken for one listed twice."""
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text.strip()).strip("-")
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    if not keep:
        return digest
    return keep if len(keep) <= 80 else f"{keep[:67].rstrip('-')}-{digest}"


def _parse_date(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def list_feed(feed: str, timeout_s: float = 60.0) -> list[EpisodeSource]:
    """Episodes (with an audio enclosure) of an RSS/Atom feed given as URL or local file."""
    import feedparser
    import httpx

    if feed.startswith(("http://", "https://")):
        try:
            resp = httpx.get(feed, timeout=timeout_s, follow_redirects=True, headers=HEADERS)
            resp.raise_for_status()
        except httpx.HTTPError as e:
            raise InputError(f"feed {feed}: unreachable ({e.__class__.__name__}: {e})") from None
        parsed = feedparser.parse(resp.content)
    else:
        if not Path(feed).is_file():
            raise InputError(f"feed {feed}: no such file")
        parsed = feedparser.parse(Path(feed).read_bytes())
    def malformed() -> InputError:
        exc = parsed.get("bozo_exception")
        return InputError(f"feed {feed}: malformed feed XML ({exc.__class__.__name__}: {exc})")

    if parsed.get("bozo") and not parsed.entries:
        raise malformed()
    if not parsed.entries:
        raise InputError(f"feed {feed}: no episodes (not an RSS/Atom feed, or an empty one)")
    out = []
    for entry in parsed.entries:
        enclosure = _audio_enclosure(entry.get("enclosures", []))
        if enclosure is None:
            continue
        published = None
        if entry.get("published_parsed"):
            published = datetime(*entry.published_parsed[:6], tzinfo=UTC).date().isoformat()
        elif entry.get("published"):
            try:
                published = parsedate_to_datetime(entry.published).date().isoformat()
            except (TypeError, ValueError):
                published = None
        try:
            declared = int(enclosure.get("length") or 0) or None
        except ValueError:
            declared = None
        guid = entry.get("id") or enclosure["href"]
        out.append(
            EpisodeSource(
                id=_slug(guid), title=entry.get("title", ""), url=enclosure["href"], published=published,
                declared_bytes=declared, origin=feed,
            )
        )
    if not out:
        if parsed.get("bozo"):
            raise malformed()
        raise InputError(f"feed {feed}: no episode has an audio enclosure")
    return out


def _audio_enclosure(enclosures: list) -> dict | None:
    """The episode's audio among its enclosures: a feed may list cover art first, or the same episode in several
    formats. Audio by type, then by file extension, then video (its sound track), then the first that is not an
    image or a text page ("application/octet-stream" from a tracking URL without an extension may well be audio;
    what is not fails at download, recorded)."""
    def ext(e: dict) -> str:
        return Path(urlparse(e["href"]).path).suffix.lower()

    def kind(e: dict) -> str:
        return str(e.get("type") or "").split("/")[0].lower()

    usable = [e for e in enclosures if e.get("href")]
    for ok in (lambda e: kind(e) == "audio", lambda e: ext(e) in AUDIO_EXT, lambda e: kind(e) == "video",
               lambda e: kind(e) not in ("image", "text")):
        found = next((e for e in usable if ok(e)), None)
        if found is not None:
            return found
    return None


def list_folder(folder: str) -> list[EpisodeSource]:
    """Audio files under a local folder (recursively), as episodes."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"source {folder}: not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXT)
    return [
        EpisodeSource(
            id=_slug(p.relative_to(root).as_posix()), title=p.stem, url=str(p.resolve()),
            published=datetime.fromtimestamp(p.stat().st_mtime, tz=UTC).date().isoformat(),
            declared_bytes=p.stat().st_size, origin=folder,
        )
        for p in files
    ]


def _s3_client(settings: object | None):  # noqa: ANN202 - boto3 client type
    import boto3
    from botocore.config import Config

    from voicepipe.config import load_settings

    s = settings or load_settings()
    secret = s.s3_secret_key.get_secret_value() if s.s3_secret_key else None
    return boto3.client(
        "s3", endpoint_url=s.s3_endpoint_url, aws_access_key_id=s.s3_access_key, aws_secret_access_key=secret,
        region_name=s.s3_region,
        # MinIO and other S3-compatible servers want path-style addressing
        config=Config(s3={"addressing_style": "path"}) if s.s3_endpoint_url else None,
    )


def list_s3(prefix_url: str, settings: object | None = None) -> list[EpisodeSource]:
    """Audio objects under s3://bucket/prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    u = urlparse(prefix_url)
    bucket, prefix = u.netloc, u.path.lstrip("/")
    out = []
    try:
        pages = _s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if Path(key).suffix.lower() in AUDIO_EXT:
                    out.append(
                        EpisodeSource(
                            id=_slug(key), title=Path(key).stem, url=f"s3://{bucket}/{key}",
                            published=obj["LastModified"].date().isoformat(), declared_bytes=obj["Size"],
                            origin=prefix_url,
                        )
                    )
    except (BotoCoreError, ClientError) as e:
        raise InputError(f"source {prefix_url}: cannot list ({e.__class__.__name__}: {e})") from None
    return sorted(out, key=lambda e: e.id)


def select(
    episodes: list[EpisodeSource], *, since: date | None, until: date | None, max_episodes: int | None
) -> list[EpisodeSource]:
    """Apply the date range and the episode cap (newest first when capped)."""
    keep = []
    for ep in episodes:
        d = _parse_date(ep.published)
        if (since and d and d < since) or (until and d and d > until):
            continue
        keep.append(ep)
    if max_episodes is not None and len(keep) > max_episodes:
        keep = sorted(keep, key=lambda e: e.published or "", reverse=True)[:max_episodes]
    return keep


def _looks_like_html(head: bytes) -> bool:
    h = head.lstrip()[:512].lower()
    return h.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in h


def download(
    src: EpisodeSource,
    dest: Path,
    *,
    max_bytes: int,
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    settings: object | None = None,
) -> Path:
    """Fetch an episode to `dest` (resuming a partial `dest.part`). Raises InputError with the reason."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.declared_bytes and src.declared_bytes > max_bytes:
        raise InputError(f"episode {src.url}: over the size limit ({src.declared_bytes / 1e6:.1f} MB declared "
                         f"> {max_bytes / 1e6:.1f} MB)")
    if src.url.startswith("s3://"):
        return _download_s3(src, dest, max_bytes, settings)
    if not src.url.startswith(("http://", "https://")):
        path = Path(src.url)
        if not path.is_file():
            raise InputError(f"episode {src.url}: no such file")
        if path.stat().st_size > max_bytes:
            raise InputError(f"episode {src.url}: over the size limit ({path.stat().st_size / 1e6:.1f} MB "
                             f"> {max_bytes / 1e6:.1f} MB)")
        return path
    return _download_http(src, dest, max_bytes, timeout_s, retries, backoff_s)


def _download_http(
    src: EpisodeSource, dest: Path, max_bytes: int, timeout_s: float, retries: int, backoff_s: float
) -> Path:
    import httpx

    part = dest.with_name(dest.name + ".part")
    last_err = ""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {**HEADERS, "Range": f"bytes={have}-"} if have else dict(HEADERS)
        try:
            with httpx.stream("GET", src.url, headers=headers, timeout=timeout_s, follow_redirects=True) as r:
                if r.status_code == 416:  # already complete
                    break
                if r.status_code >= 400:
                    if 400 <= r.status_code < 500 and r.status_code != 429:
                        raise InputError(f"episode {src.url}: HTTP {r.status_code} {r.reason_phrase}")
                    raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype in ("text/html", "application/xhtml+xml"):
                    raise InputError(f"episode {src.url}: enclosure is an HTML page ({ctype}), not audio")
                total = r.headers.get("content-length")
                resumed = r.status_code == 206
                if not resumed:
                    have = 0
                if total is not None and have + int(total) > max_bytes:
                    raise InputError(f"episode {src.url}: over the size limit ({(have + int(total)) / 1e6:.1f} MB "
                                     f"> {max_bytes / 1e6:.1f} MB)")
                with open(part, "ab" if resumed else "wb") as f:
                    size = have
                    for chunk in r.iter_bytes(1 << 16):
                        size += len(chunk)
                        if size > max_bytes:
                            raise InputError(f"episode {src.url}: over the size limit (more than "
                                             f"{max_bytes / 1e6:.1f} MB)")
                        f.write(chunk)
                if total is not None and part.stat().st_size < have + int(total):
                    raise httpx.ReadError("connection closed before the whole body arrived")
            break
        except InputError:
            part.unlink(missing_ok=True)
            raise
        except httpx.HTTPError as e:
            last_err = f"{e.__class__.__name__}: {e}"
            if attempt < retries:
                time.sleep(backoff_s * 2**attempt)
    else:
        part.unlink(missing_ok=True)
        raise InputError(f"episode {src.url}: unreachable after {retries + 1} attempts ({last_err})")
    size = part.stat().st_size
    if size == 0:
        part.unlink(missing_ok=True)
        raise InputError(f"episode {src.url}: empty file (0 bytes)")
    with open(part, "rb") as f:
        head = f.read(1024)
    if _looks_like_html(head):
        part.unlink(missing_ok=True)
        raise InputError(f"episode {src.url}: enclosure is an HTML page, not audio")
    part.replace(dest)
    return dest


def _download_s3(src: EpisodeSource, dest: Path, max_bytes: int, settings: object | None) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    u = urlparse(src.url)
    try:
        client = _s3_client(settings)
        head = client.head_object(Bucket=u.netloc, Key=u.path.lstrip("/"))
        if head["ContentLength"] > max_bytes:
            raise InputError(f"episode {src.url}: over the size limit ({head['ContentLength'] / 1e6:.1f} MB "
                             f"> {max_bytes / 1e6:.1f} MB)")
        if head["ContentLength"] == 0:
            raise InputError(f"episode {src.url}: empty file (0 bytes)")
        client.download_file(u.netloc, u.path.lstrip("/"), str(dest))
    except (BotoCoreError, ClientError) as e:
        raise InputError(f"episode {src.url}: cannot download ({e.__class__.__name__}: {e})") from None
    return dest
