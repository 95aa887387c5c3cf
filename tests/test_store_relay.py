"""The MinIO -> Prefect event relay: MinIO's notification body in, voicepipe.corpus.changed events out."""

from __future__ import annotations

from urllib.parse import quote

from fastapi.testclient import TestClient

from voicepipe.store.relay import corpus_events, create_app


def notification(store, key: str, event: str = "s3:ObjectCreated:Put", bucket: str | None = None) -> dict:
    """The body MinIO posts to a webhook target (S3 event record format; keys URL-encoded)."""
    full = f"{store.backend.prefix}/{key}"
    return {"EventName": event, "Key": f"{store.backend.bucket}/{full}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "eventName": event,
        "s3": {"bucket": {"name": bucket or store.backend.bucket}, "object": {"key": quote(full), "size": 100}},
    }]}


def test_corpus_ref_written_outside_a_flow_emits_once(s3_store):
    v1 = s3_store.put_json({"corpus": 1}, step="corpus.build")
    v2 = s3_store.put_json({"corpus": 2}, step="corpus.build")
    key = "refs/corpus/alice/latest.json"
    s3_store.set_ref("corpus/alice/latest", v1, {"version": "v1"})
    (ev,) = corpus_events(notification(s3_store, key), s3_store)
    assert ev == {"event": "voicepipe.corpus.changed", "resource": {"prefect.resource.id": "voicepipe.corpus.alice"},
                  "payload": {"speaker": "alice", "version": "v1", "sha": v1.sha256, "source": "minio-relay"}}
    s3_store.set_ref("corpus/alice/latest", v1, {"version": "v1"})  # same version again: no event
    assert corpus_events(notification(s3_store, key), s3_store) == []
    s3_store.set_ref("corpus/alice/latest", v2, {"version": "v2", "flow_run_id": "abc"})  # the flow emitted already
    assert corpus_events(notification(s3_store, key), s3_store) == []
    s3_store.set_ref("corpus/alice/latest", v2, {"version": "v3"})
    assert [e["payload"]["version"] for e in corpus_events(notification(s3_store, key), s3_store)] == ["v3"]
    # Not a corpus ref, another bucket, a delete: ignored.
    assert corpus_events(notification(s3_store, "refs/voices/alice.json"), s3_store) == []
    assert corpus_events(notification(s3_store, key, bucket="other"), s3_store) == []
    assert corpus_events(notification(s3_store, key, event="s3:ObjectRemoved:Delete"), s3_store) == []
    assert corpus_events(notification(s3_store, "refs/corpus/bob/latest.json"), s3_store) == []  # no such ref


def test_relay_app_emits_and_checks_the_token(s3_store):
    sha = s3_store.put_json({"corpus": 1}, step="corpus.build")
    s3_store.set_ref("corpus/bob/latest", sha, {"version": "2026-11-25"})
    emitted = []
    client = TestClient(create_app(s3_store, emit=lambda **kw: emitted.append(kw), token="s3cret"))
    body = notification(s3_store, "refs/corpus/bob/latest.json")
    assert client.get("/health").json() == {"status": "ok"}
    assert client.post("/minio", json=body).status_code == 401
    assert client.post("/minio", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = client.post("/minio", json=body, headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["emitted"][0]["version"] == "2026-11-25"
    assert [e["payload"]["speaker"] for e in emitted] == ["bob"]


def test_relay_without_a_token_refuses_everything(s3_store, monkeypatch):
    """An unset token is not an open door: every notification is refused, with or without a header."""
    monkeypatch.delenv("VOICEPIPE_RELAY_TOKEN", raising=False)
    sha = s3_store.put_json({"corpus": 1}, step="corpus.build")
    s3_store.set_ref("corpus/bob/latest", sha, {"version": "2026-11-26"})
    emitted = []
    client = TestClient(create_app(s3_store, emit=lambda **kw: emitted.append(kw)))
    body = notification(s3_store, "refs/corpus/bob/latest.json")
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        r = client.post("/minio", json=body, headers=headers)
        assert r.status_code == 503 and "VOICEPIPE_RELAY_TOKEN" in r.text
    assert emitted == []
    assert client.get("/health").status_code == 200


def test_relay_token_check():
    from voicepipe.store.relay import token_ok

    assert token_ok("s3cret", "Bearer s3cret") and token_ok("s3cret", "bearer  s3cret ")
    assert not token_ok("s3cret", "Bearer s3cre") and not token_ok("s3cret", "s3cret")
    assert not token_ok("s3cret", None) and not token_ok("", "Bearer ") and not token_ok("", None)
