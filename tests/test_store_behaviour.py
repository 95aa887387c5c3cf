"""The same behaviour on every backend: a local directory, moto's S3 server, and MinIO when on PATH."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.store import MULTIPART, raw_s3_client
from voicepipe.errors import StoreError
from voicepipe.store import ArtifactRef, LocalBackend, S3Backend


@pytest.fixture
def store(store_backend):
    return store_backend[0]


def corrupt(store, server, sha: str) -> None:
    """Change an object's bytes behind the store's back (not through voicepipe's code)."""
    backend = store.backend
    if isinstance(backend, LocalBackend):
        path = backend.root / "objects" / sha[:2] / sha
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        key = f"{backend.prefix}/objects/{sha[:2]}/{sha}"
        client = raw_s3_client(server)
        data = bytearray(client.get_object(Bucket=backend.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        client.put_object(Bucket=backend.bucket, Key=key, Body=bytes(data))


def test_round_trip_bytes_json_file(store, tmp_path):
    ref = store.put_bytes(b"\x00\x01voice", step="test.bytes", params={"p": 1, "path": Path("/x")}, name="b.bin")
    assert isinstance(ref, ArtifactRef)
    assert ref.sha256 == hashlib.sha256(b"\x00\x01voice").hexdigest() and ref.size == 7
    assert ref.uri.startswith(store.url) and ref.uri.endswith(ref.sha256)
    assert store.exists(ref.sha256) and store.get_bytes(ref.sha256) == b"\x00\x01voice"

    meta = store.meta(ref)
    assert meta["step"] == "test.bytes" and meta["name"] == "b.bin" and meta["size"] == 7
    assert meta["params"] == {"p": 1, "path": "/x"} and meta["inputs"] == []
    assert meta["code_version"]["voicepipe"] and "created" in meta
    assert meta["content_type"] == "application/octet-stream"

    doc = {"speaker": "alice", "hours": 1.5, "list": [1, 2]}
    jref = store.put_json(doc, step="test.json", inputs=[ref.sha256])
    assert store.get_json(jref.sha256) == doc
    assert store.meta(jref.sha256)["inputs"] == [ref.sha256]
    # Canonical JSON: the same document with other key order is the same object.
    assert store.put_json({"list": [1, 2], "hours": 1.5, "speaker": "alice"}, step="other").sha256 == jref.sha256
    assert store.meta(jref.sha256)["step"] == "test.json"  # first producer's sidecar is kept

    src = tmp_path / "clip.wav"
    src.write_bytes(os.urandom(3000))
    fref = store.put_file(src, step="test.file")
    assert store.meta(fref)["name"] == "clip.wav" and store.meta(fref)["content_type"] == "audio/x-wav"
    out = store.get_file(fref.sha256, tmp_path / "out" / "copy.wav")
    assert out.read_bytes() == src.read_bytes()
    # A directory as destination keeps the stored name.
    (tmp_path / "d").mkdir()
    assert store.get_file(fref, tmp_path / "d") == tmp_path / "d" / "clip.wav"

    missing = "0" * 64
    assert not store.exists(missing)
    with pytest.raises(StoreError, match=missing):
        store.get_bytes(missing)
    with pytest.raises(StoreError, match=missing):
        store.get_file(missing, tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(StoreError, match="not-a-hash"):
        store.get_bytes("not-a-hash")
    with pytest.raises(StoreError, match="nope.wav"):
        store.put_file(tmp_path / "nope.wav", step="test.file")


def test_large_file_round_trip_multipart(store, store_backend, tmp_path):
    server = store_backend[1]
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * MULTIPART + 12345))
    ref = store.put_file(src, step="test.big")
    assert ref.size == src.stat().st_size
    out = store.get_file(ref, tmp_path / "big.out")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref.sha256
    if server is not None:  # S3: the object was assembled from parts (a multipart ETag ends with -<parts>)
        head = raw_s3_client(server).head_object(Bucket=store.backend.bucket,
                                                 Key=f"{store.backend.prefix}/objects/{ref.sha256[:2]}/{ref.sha256}")
        assert head["ETag"].strip('"').endswith("-3")


def test_directory_round_trip(store, tmp_path):
    src = tmp_path / "ckpt"
    (src / "speech_tokenizer").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "model.safetensors").write_bytes(os.urandom(5000))
    (src / "speech_tokenizer" / "config.json").write_text('{"b": 2}')
    (src / "same.json").write_text('{"a": 1}')  # identical content under two names
    episode = store.put_bytes(b"episode", step="ingest")
    tree = store.put_dir(src, step="train.save", inputs=[episode], params={"epoch": 3}, name="epoch-003")
    meta = store.meta(tree)
    assert meta["kind"] == "tree" and meta["params"] == {"epoch": 3} and meta["name"] == "epoch-003"
    manifest = store.get_json(tree)
    assert [f["path"] for f in manifest["files"]] == ["config.json", "model.safetensors", "same.json",
                                                      "speech_tokenizer/config.json"]
    # Putting the same tree again gives the same sha.
    assert store.put_dir(src, step="train.save", inputs=[episode], params={"epoch": 3}).sha256 == tree.sha256

    dest = store.get_dir(tree, tmp_path / "restored")
    for p in src.rglob("*"):
        if p.is_file():
            assert (dest / p.relative_to(src)).read_bytes() == p.read_bytes()
    assert sorted(x.relative_to(dest).as_posix() for x in dest.rglob("*") if x.is_file()) == [
        "config.json", "model.safetensors", "same.json", "speech_tokenizer/config.json"]
    with pytest.raises(StoreError, match="not empty"):
        store.get_dir(tree, dest)
    store.get_dir(tree, dest, overwrite=True)
    with pytest.raises(StoreError, match="not a directory tree"):
        store.get_dir(episode, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_corrupted_object_is_caught_and_quarantined(store_backend, tmp_path):
    store, server = store_backend
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "a.bin"
    src.write_bytes(os.urandom(4096))
    ref = store.put_file(src, step="test")
    tree = store.put_dir(tmp_path / "src", step="test")  # the tree holds the same file
    corrupt(store, server, ref.sha256)
    with pytest.raises(StoreError, match=f"{ref.sha256}.*corrupted"):
        store.get_bytes(ref.sha256)
    # The bad bytes left objects/ (kept under quarantine/), so storing the content again repairs the store.
    assert not store.exists(ref) and len(store.backend.list("quarantine/")) == 1
    assert store.put_file(src, step="repair") == ref and store.get_bytes(ref) == src.read_bytes()
    assert store.meta(ref)["step"] == "test"  # the original provenance survives the repair

    corrupt(store, server, ref.sha256)
    with pytest.raises(StoreError, match=f"{ref.sha256}.*corrupted"):
        store.get_file(ref.sha256, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    assert not list(tmp_path.glob(".out.bin*"))  # no partial download left behind

    store.put_file(src, step="test")
    corrupt(store, server, ref.sha256)
    with pytest.raises(StoreError, match=f"{ref.sha256}.*corrupted"):
        store.get_dir(tree, tmp_path / "restored")
    assert not (tmp_path / "restored").exists() and not list(tmp_path.glob(".restored*"))
    assert len(store.backend.list("quarantine/")) == 3
    store.put_file(src, step="test")
    assert (store.get_dir(tree, tmp_path / "restored") / "a.bin").read_bytes() == src.read_bytes()


class Interrupted(Exception):
    pass


def _pending_multipart(store, server) -> list:
    client = raw_s3_client(server)
    return client.list_multipart_uploads(Bucket=store.backend.bucket).get("Uploads", [])


def test_failed_write_leaves_nothing_visible(store_backend, tmp_path):
    store, server = store_backend
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * MULTIPART + 1))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    before = store.backend.list("")
    seen = []

    def boom(n: int) -> None:
        seen.append(n)
        if sum(seen) > MULTIPART // 2:
            raise Interrupted("mid-write")

    store.backend.on_chunk = boom
    with pytest.raises(Interrupted):
        store.put_file(src, step="test")
    store.backend.on_chunk = None
    assert 0 < sum(seen) < src.stat().st_size
    assert not store.exists(sha)
    assert store.backend.list("") == before  # no object, no sidecar, nothing half-written
    if isinstance(store.backend, LocalBackend):
        assert not any((store.backend.root / ".tmp").iterdir())
    else:
        assert _pending_multipart(store, server) == []  # boto3 aborted the multipart upload
    ref = store.put_file(src, step="test")  # and a retry succeeds
    assert ref.sha256 == sha and store.get_file(ref, tmp_path / "ok.bin").read_bytes() == src.read_bytes()


WRITER = textwrap.dedent("""
    import json, sys, time
    from voicepipe.config import load_settings
    from voicepipe.store import open_store
    cfg = json.loads(sys.argv[1])
    store = open_store(load_settings(**cfg["settings"]), **cfg["options"])
    sent = 0
    def slow(n):  # run at full speed past the first 5 MiB part, then hang there until killed
        global sent
        sent += n
        if sent > cfg["past"]:
            print("past", sent, flush=True)
            time.sleep(60)
    store.backend.on_chunk = slow
    store.put_file(cfg["src"], step="test.killed")
    print("finished", flush=True)
""")


def test_writer_killed_mid_write_leaves_nothing_visible(store_backend, tmp_path):
    """A writer process killed with SIGKILL mid-upload: readers never see the object, partial or whole."""
    store, server = store_backend
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(2 * MULTIPART + 1))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    if isinstance(store.backend, LocalBackend):
        cfg = {"settings": {"store_url": store.url}, "options": {}}
    else:
        cfg = {"settings": {"store_url": store.url, "s3_endpoint_url": server["endpoint"],
                            "s3_access_key": server["access_key"], "s3_secret_key": server["secret_key"]},
               "options": {"multipart_threshold": MULTIPART, "multipart_chunksize": MULTIPART,
                           "max_concurrency": 1}}
    cfg["src"], cfg["past"] = str(src), MULTIPART + 100_000
    proc = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(cfg)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        line = proc.stdout.readline().split()  # the writer has sent more than one whole S3 part
        assert line[0] == "past" and MULTIPART < int(line[1]) < src.stat().st_size
        assert not store.exists(sha)  # a reader during the write sees nothing
        with pytest.raises(StoreError, match="not found"):
            store.get_bytes(sha)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not store.exists(sha)
    assert not [k for k in store.backend.list("") if sha in k]
    assert store.put_file(src, step="test").sha256 == sha


def test_lineage_walks_back_to_the_source(store):
    episode = store.put_bytes(b"episode audio", step="corpus.fetch", name="ep1.mp3", params={"url": "http://x/1"})
    vocals = store.put_bytes(b"vocals", step="corpus.separate", inputs=[episode])
    clip1 = store.put_bytes(b"clip1", step="corpus.segment", inputs=[vocals], params={"start": 0.0})
    clip2 = store.put_bytes(b"clip2", step="corpus.segment", inputs=[vocals], params={"start": 4.0})
    ghost = "f" * 64  # an input that was never stored
    manifest = store.put_json({"clips": [clip1.sha256, clip2.sha256]}, step="corpus.manifest",
                              inputs=[clip1, clip2, ghost])
    chain = store.lineage(manifest.sha256)
    by_sha = {m["sha256"]: m for m in chain}
    assert [m["sha256"] for m in chain][0] == manifest.sha256 and chain[0]["depth"] == 0
    assert len(chain) == len(by_sha) == 6  # vocals reached twice, listed once
    assert by_sha[episode.sha256]["step"] == "corpus.fetch" and by_sha[episode.sha256]["depth"] == 3
    assert by_sha[episode.sha256]["params"] == {"url": "http://x/1"}
    assert by_sha[vocals.sha256]["depth"] == 2 and by_sha[clip2.sha256]["params"] == {"start": 4.0}
    assert by_sha[ghost] == {"sha256": ghost, "missing": True, "depth": 1}
    roots = [m for m in chain if not m.get("missing") and not m["inputs"]]
    assert [r["sha256"] for r in roots] == [episode.sha256]
    assert store.lineage(episode) == [{**store.meta(episode), "depth": 0}]
    with pytest.raises(StoreError, match="1" * 64):
        store.lineage("1" * 64)


def test_refs_with_history(store):
    a = store.put_bytes(b"voice a", step="train")
    b = store.put_bytes(b"voice b", step="train")
    assert store.get_ref("voices/alice") is None
    store.set_ref("voices/alice", a, {"sim": 0.71})
    store.set_ref("voices/alice", b.sha256, {"sim": 0.78})
    store.set_ref("voices/bob", a)
    store.set_ref("voicesX/carol", a)
    store.set_ref("corpus/alice/latest", b, {"version": "v2"})
    cur = store.get_ref("voices/alice")
    assert cur["sha"] == b.sha256 and cur["extra"] == {"sim": 0.78} and cur["previous"] == a.sha256
    assert [r["name"] for r in store.list_refs("voices/")] == ["voices/alice", "voices/bob"]
    assert [r["name"] for r in store.list_refs("voices")] == ["voices/alice", "voices/bob", "voicesX/carol"]
    assert len(store.list_refs()) == 4
    hist = store.ref_history("voices/alice")
    assert [(h["sha"], h["extra"]["sim"]) for h in hist] == [(a.sha256, 0.71), (b.sha256, 0.78)]
    assert store.backend.list("refs-log/voices/alice/")  # the log is stored, one object per set
    with pytest.raises(StoreError, match="9{64}"):
        store.set_ref("voices/alice", "9" * 64)
    for bad in ("../escape", "voices//x", "", "voices/./x", "voices/.hidden", "tab\tname", "voices/trailing "):
        with pytest.raises(StoreError, match="ref name"):
            store.set_ref(bad, a)
    store.set_ref("voices/Zoë Smith", a)  # speaker names as people write them
    assert store.get_ref("voices/Zoë Smith")["sha"] == a.sha256
    assert "voices/Zoë Smith" in [r["name"] for r in store.list_refs("voices/")]
    assert store.get_ref("voices/alice")["sha"] == b.sha256


def test_step_memo(store):
    out = store.put_bytes(b"denoised", step="corpus.denoise")
    key = hashlib.sha256(b"input audio + params").hexdigest()
    assert store.memo_get("corpus.denoise", key) is None
    store.memo_put("corpus.denoise", key, out)
    assert store.memo_get("corpus.denoise", key) == out.sha256
    assert store.memo_get("corpus.other", key) is None
    odd_key = "episode https://feed/x?y=1 params={'a': 1}"  # any string works as a key
    store.memo_put("corpus.denoise", odd_key, out.sha256)
    assert store.memo_get("corpus.denoise", odd_key) == out.sha256
    with pytest.raises(StoreError, match="2{64}"):
        store.memo_put("corpus.denoise", "k", "2" * 64)


def test_backends_are_the_classes_named(store_backend):
    store, server = store_backend
    assert isinstance(store.backend, LocalBackend if server is None else S3Backend)
    assert store.url.startswith("file://" if server is None else "s3://voicepipe-test/t-")


def test_store_pickles_for_other_processes(store):
    """Dask workers and Prefect task inputs get a pickled store: it must reconnect and see the same objects."""
    import pickle

    ref = store.put_bytes(b"shared", step="t")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.url == store.url and clone.get_bytes(ref) == b"shared"
    assert clone.put_bytes(b"from clone", step="t").uri.startswith(store.url)


def test_file_changing_during_upload_is_refused(store, tmp_path):
    src = tmp_path / "growing.wav"
    src.write_bytes(os.urandom(2 * MULTIPART))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    appended = []

    def writer_still_busy(n: int) -> None:  # another process keeps writing the file during the upload
        if not appended:
            appended.append(n)
            with open(src, "ab") as f:
                f.write(b"more audio")

    store.backend.on_chunk = writer_still_busy
    with pytest.raises(StoreError, match="growing.wav: changed while it was being stored"):
        store.put_file(src, step="t")
    store.backend.on_chunk = None
    assert not store.exists(sha) and not store.backend.list("meta/")
    ref = store.put_file(src, step="t")
    assert store.get_bytes(ref) == src.read_bytes()
