"""Input files given from where the user is (a UI form): store:<ref|sha|prefix>, s3://bucket/key, http(s):// URLs, or
a path on the worker, fetched into the content-addressed input cache."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from tests.fixtures.store import raw_s3_client, s3_settings_for
from voicepipe.errors import InputError
from voicepipe.store import open_store
from voicepipe.store.inputs import fetch_input, localize


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_every_kind_of_ref_becomes_a_cached_local_file(tmp_path, http_dir, s3_server):
    data = b"RIFF fake wav bytes"
    sha = hashlib.sha256(data).hexdigest()
    settings = s3_settings_for(s3_server, "s3://voicepipe-test/inputs-store", tmp_path / "home")
    store = open_store(settings)
    store.set_ref("enroll/alice", store.put_bytes(data, step="manual", name="alice.wav"))
    root, base = http_dir
    (root / "alice.wav").write_bytes(data)
    s3 = raw_s3_client(s3_server)
    s3.create_bucket(Bucket="uploads")
    s3.put_object(Bucket="uploads", Key="alice/clip one.wav", Body=data)
    local = tmp_path / "clip.wav"
    local.write_bytes(data)

    refs = ["store:enroll/alice", f"store:{sha[:12]}", f"{base}/alice.wav", "s3://uploads/alice/clip one.wav",
            str(local)]
    paths = localize(refs, settings, what="enrollment clip")
    assert paths[-1] == str(local)  # a path on the worker stays as it is
    for p in paths[:-1]:
        assert p.startswith(str(tmp_path / "home" / "inputs" / sha)), p
        assert open(p, "rb").read() == data
    assert paths[0].endswith("/alice.wav") and paths[3].endswith("/clip_one.wav")


def test_unusable_refs_name_the_input_and_the_reason(tmp_path, http_dir, s3_server):
    settings = s3_settings_for(s3_server, "s3://voicepipe-test/inputs-errors", tmp_path / "home")
    _, base = http_dir
    cases = {
        f"{base}/missing.wav": "HTTP 404",
        "s3://uploads-none/x.wav": "no such object",
        "store:enroll/nobody": "neither a sha256",
        str(tmp_path / "nope.wav"): "no such file (on this worker: give an s3:// or http(s):// URL, or store:<ref>",
    }
    for ref, why in cases.items():
        with pytest.raises(InputError) as e:
            fetch_input(ref, settings, what="enrollment clip")
        msg = str(e.value)
        assert msg.startswith(f"enrollment clip {ref}: ") and why in msg and "\n" not in msg, msg
    assert not list((tmp_path / "home").glob(".fetch-*"))  # no half-fetched file left behind
