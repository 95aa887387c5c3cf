"""Opening stores: URL schemes, bucket creation, unreachable endpoints and rejected credentials (one clear error)."""

from __future__ import annotations

import socket
import threading
import time
import uuid

import pytest

from tests.fixtures.store import free_port, moto_server, raw_s3_client, s3_settings_for
from voicepipe.config import load_settings
from voicepipe.errors import ConfigError, StoreError, VoicepipeError
from voicepipe.store import LocalBackend, S3Backend, open_store


def test_urls_and_paths_pick_the_backend(tmp_path):
    assert isinstance(open_store(tmp_path / "a").backend, LocalBackend)
    assert open_store(f"file://{tmp_path}/b").url == (tmp_path / "b").as_uri()
    assert open_store(str(tmp_path / "c")).backend.root == tmp_path / "c"
    s = open_store(load_settings(home=tmp_path / "home"))  # empty store_url -> <home>/store
    assert s.backend.root == (tmp_path / "home" / "store").resolve()


@pytest.mark.parametrize("url, why", [
    ("gs://bucket/x", "unknown scheme 'gs'"),
    ("http://example/x", "unknown scheme 'http'"),
    ("file://host/abs", "absolute path"),
    ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
    ("s3://", "not a valid S3 bucket name"),
])
def test_bad_store_urls_name_the_url(url, why):
    with pytest.raises(ConfigError) as e:
        open_store(url)
    msg = str(e.value)
    assert url in msg and why in msg and "\n" not in msg
    assert isinstance(e.value, VoicepipeError)


def test_missing_bucket_is_created(s3_server, tmp_path):
    bucket = f"fresh-{uuid.uuid4().hex[:8]}"
    client = raw_s3_client(s3_server)
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    store = open_store(s3_settings_for(s3_server, f"s3://{bucket}/deep/prefix", tmp_path))
    assert isinstance(store.backend, S3Backend)
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    ref = store.put_bytes(b"x", step="t")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"deep/prefix/objects/{ref.sha256[:2]}/{ref.sha256}" in keys
    # A second opener finds the bucket and the object.
    assert open_store(s3_settings_for(s3_server, f"s3://{bucket}/deep/prefix", tmp_path)).get_bytes(ref) == b"x"


def test_unreachable_endpoint_one_clear_error_fast(tmp_path):
    port = free_port()  # nothing listens here: connection refused
    settings = load_settings(home=tmp_path, store_url="s3://voicepipe/x", s3_endpoint_url=f"http://127.0.0.1:{port}",
                             s3_access_key="k", s3_secret_key="s", s3_max_attempts=2, s3_connect_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        open_store(settings)
    assert time.monotonic() - t0 < 15
    msg = str(e.value)
    assert f"http://127.0.0.1:{port}" in msg and "unreachable after 2 attempts" in msg and "\n" not in msg


def test_silent_endpoint_retries_are_bounded(tmp_path):
    """A server that accepts connections and never answers: exactly max_attempts tries, then one error."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    settings = load_settings(home=tmp_path, store_url="s3://voicepipe/x", s3_endpoint_url=f"http://127.0.0.1:{port}",
                             s3_access_key="k", s3_secret_key="s", s3_max_attempts=3, s3_connect_timeout=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(StoreError, match=f"127.0.0.1:{port}: unreachable after 3 attempts"):
            open_store(settings, read_timeout=0.5)
    finally:
        stop.set()
        th.join(2)
        for c in conns:
            c.close()
        srv.close()
    assert len(conns) == 3  # bounded: one connection per attempt, no more
    assert time.monotonic() - t0 < 15


@pytest.fixture(scope="module")
def auth_moto():
    """A moto server that checks credentials (after 3 unauthenticated set-up calls that create an IAM user)."""
    import boto3

    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        iam = boto3.client("iam", endpoint_url=server["endpoint"], region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="voicepipe")
        iam.put_user_policy(UserName="voicepipe", PolicyName="s3", PolicyDocument=(
            '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'))
        key = iam.create_access_key(UserName="voicepipe")["AccessKey"]
        yield {**server, "access_key": key["AccessKeyId"], "secret_key": key["SecretAccessKey"]}


def test_good_credentials_work_when_checked(auth_moto, tmp_path):
    store = open_store(s3_settings_for(auth_moto, "s3://authed/p", tmp_path))
    assert store.get_bytes(store.put_bytes(b"ok", step="t")) == b"ok"


@pytest.mark.parametrize("which", ["secret", "key"])
def test_bad_credentials_one_clear_error(auth_moto, tmp_path, which):
    server = dict(auth_moto)
    server["secret_key" if which == "secret" else "access_key"] = "wrong" * 4
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        open_store(s3_settings_for(server, "s3://authed/p", tmp_path))
    msg = str(e.value)
    assert auth_moto["endpoint"] in msg and "credentials rejected" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10


def test_bad_credentials_minio(minio, tmp_path):
    server = {**minio, "secret_key": "not-the-password"}
    with pytest.raises(StoreError, match="credentials rejected"):
        open_store(s3_settings_for(server, "s3://authed/p", tmp_path))


def test_malformed_endpoint_is_a_config_error(tmp_path):
    settings = load_settings(home=tmp_path, store_url="s3://bucket/p", s3_endpoint_url="minio:9000",
                             s3_access_key="a", s3_secret_key="b")
    with pytest.raises(ConfigError, match="S3 endpoint minio:9000: .*http://minio:9000"):
        open_store(settings)
