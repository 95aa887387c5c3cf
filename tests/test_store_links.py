"""Names people type (unique sha prefixes), write-once refs, and links a browser can follow (presigned S3 URLs,
the store relay's /files and /trees routes) instead of s3:// URIs."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from fastapi.testclient import TestClient

from voicepipe.config import load_settings
from voicepipe.errors import StoreError
from voicepipe.store.links import browser_link, tree_link
from voicepipe.store.relay import create_app


def _two_with_common_prefix(store) -> tuple[str, str, str]:
    """Store small blobs until two share their first 4 hex digits; returns (prefix, sha_a, sha_b)."""
    seen: dict[str, str] = {}
    i = 0
    while True:
        sha = store.put_bytes(f"blob {i}".encode(), step="test").sha256
        if sha[:4] in seen:
            return sha[:4], seen[sha[:4]], sha
        seen[sha[:4]] = sha
        i += 1


def test_resolve_prefix_ref_and_errors(local_store):
    sha = local_store.put_bytes(b"hello", step="test").sha256
    assert local_store.resolve(sha) == sha
    assert local_store.resolve(sha[:16]) == sha
    assert local_store.resolve(sha[:16].upper()) == sha
    local_store.set_ref("voices/alice", sha)
    assert local_store.resolve("voices/alice") == sha
    prefix, a, b = _two_with_common_prefix(local_store)
    with pytest.raises(StoreError, match="ambiguous sha256 prefix.*give more digits"):
        local_store.resolve(prefix)
    assert local_store.resolve(a[:12]) == a
    with pytest.raises(StoreError, match="no object .* starting with it"):
        local_store.resolve("0000000000000000deadbeef")
    with pytest.raises(StoreError, match="neither a sha256"):
        local_store.resolve("no-such-ref")
    with pytest.raises(StoreError, match="neither a sha256"):
        local_store.resolve("abc")  # too short to be a prefix


def test_set_ref_if_absent_keeps_the_first_value(local_store):
    a = local_store.put_bytes(b"a", step="test").sha256
    b = local_store.put_bytes(b"b", step="test").sha256
    first = local_store.set_ref("corpus/x/versions/v1", a, {"run": 1}, if_absent=True)
    again = local_store.set_ref("corpus/x/versions/v1", b, {"run": 2}, if_absent=True)
    assert again == first and local_store.get_ref("corpus/x/versions/v1")["sha"] == a
    assert len(local_store.ref_history("corpus/x/versions/v1")) == 1


def test_presigned_link_opens_in_a_plain_http_client(s3_store, s3_server, tmp_path):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.html").write_text("<html><body>hello report</body></html>")
    (tmp_path / "rep" / "metrics.png").write_bytes(b"\x89PNG fake")
    tree = s3_store.put_dir(tmp_path / "rep", step="test").sha256
    settings = load_settings(s3_endpoint_url=s3_server["endpoint"])
    url = tree_link(s3_store, tree, "report.html", settings)
    assert url.startswith(s3_server["endpoint"] + "/") and "X-Amz-Signature" in url
    r = httpx.get(url)
    assert r.status_code == 200 and "hello report" in r.text
    assert r.headers["content-type"].startswith("text/html")
    sha = hashlib.sha256(b"\x89PNG fake").hexdigest()
    r2 = httpx.get(browser_link(s3_store, sha[:10], settings=settings))
    assert r2.status_code == 200 and r2.content == b"\x89PNG fake" and r2.headers["content-type"] == "image/png"
    # signed for the endpoint browsers use when it differs from the workers' one
    public = load_settings(s3_endpoint_url=s3_server["endpoint"], s3_public_endpoint_url="http://s3.example.test:9000")
    assert browser_link(s3_store, sha, settings=public).startswith("http://s3.example.test:9000/")


def test_relay_serves_files_and_trees_with_relative_links(local_store, tmp_path):
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "report.html").write_text("<img src='metrics.png'>")
    (tmp_path / "rep" / "metrics.png").write_bytes(b"\x89PNG fake")
    tree = local_store.put_dir(tmp_path / "rep", step="test").sha256
    settings = load_settings(link_base_url="http://relay.test:8787/")
    url = tree_link(local_store, tree[:12], "report.html", settings)
    assert url == f"http://relay.test:8787/trees/{tree}/report.html"
    client = TestClient(create_app(store=local_store, emit=lambda **kw: None, token=""))
    page = client.get(url.removeprefix("http://relay.test:8787"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    img = client.get(f"/trees/{tree}/metrics.png")  # where the page's relative link resolves
    assert img.status_code == 200 and img.content == b"\x89PNG fake"
    sha = hashlib.sha256(b"\x89PNG fake").hexdigest()
    link = browser_link(local_store, sha, "m.png", settings)
    assert link == f"http://relay.test:8787/files/{sha}/m.png"
    assert client.get(f"/files/{sha}/m.png").content == b"\x89PNG fake"
    assert client.get(f"/trees/{tree}/nope.html").status_code == 404
    assert client.get(f"/files/{'0' * 64}/x").status_code == 404
    # a local store without a relay: the file:// URI (a browser on that machine opens it)
    assert browser_link(local_store, sha, settings=load_settings()).startswith("file://")
