"""The store relay: browser links to stored files, and MinIO bucket notifications -> Prefect events.

Links (what `voicepipe.store.links` points at when `VOICEPIPE_LINK_BASE_URL` is this relay's address):

    GET /files/<sha256>/<name>     one stored object, with its content type (name: only for the browser)
    GET /trees/<sha256>/<path>     a file inside a stored directory tree: a page's relative links stay in the tree

Both are read-only and verified against the hash. Anyone who reaches the relay can read the store: it binds
loopback by default (`voicepipe store serve`); expose it only on a network you trust.

Events (optional; for corpus refs written outside Prefect flows):

Prefect webhooks are a Prefect Cloud feature; on a self-hosted server an event can come from a flow
(`build_corpus` emits `voicepipe.corpus.changed` itself) or from this relay. MinIO posts a notification for each
object written; when the object is a speaker's `refs/corpus/<speaker>/latest.json` ref in our store, and the ref
was not written by a Prefect flow run (those emitted already), the relay emits the same event the flow would:

    voicepipe.corpus.changed   resource voicepipe.corpus.<speaker>   payload {speaker, version, sha, source}

Run: `uvicorn voicepipe.store.relay:app --host 0.0.0.0 --port 8787` with the VOICEPIPE_* store settings,
PREFECT_API_URL and VOICEPIPE_RELAY_TOKEN; point MinIO at `http://<relay>:8787/minio` with the same token as its
webhook `auth_token` (infra/README.md shows the `mc` commands). Without a token the relay refuses every
notification (503): an open relay would let anyone on the network start training runs.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from voicepipe.store.core import ArtifactStore

log = logging.getLogger(__name__)
EVENT = "voicepipe.corpus.changed"
_REF_RE = re.compile(r"^refs/(corpus/(?P<speaker>[^/]+)/latest)\.json$")

Emitter = Callable[..., Any]


def corpus_events(notification: dict[str, Any], store: ArtifactStore) -> list[dict[str, Any]]:
    """The Prefect events a MinIO (S3 event format) notification calls for; reads each ref from the store."""
    bucket = getattr(store.backend, "bucket", None)
    prefix = getattr(store.backend, "prefix", "")
    events = []
    for rec in notification.get("Records") or []:
        if not str(rec.get("eventName", "")).startswith("s3:ObjectCreated:"):
            continue
        s3 = rec.get("s3") or {}
        if bucket is not None and (s3.get("bucket") or {}).get("name") != bucket:
            continue
        key = unquote_plus(str((s3.get("object") or {}).get("key", "")))
        if prefix:
            if not key.startswith(prefix + "/"):
                continue
            key = key[len(prefix) + 1:]
        m = _REF_RE.match(key)
        if not m:
            continue
        ref = store.get_ref(m.group(1))
        if ref is None:
            continue
        extra = ref.get("extra") or {}
        if extra.get("flow_run_id"):
            continue  # written inside a flow run, which emitted the event itself
        version = extra.get("version") or ref["sha"]
        history = store.ref_history(m.group(1))
        if len(history) >= 2 and ((history[-2].get("extra") or {}).get("version") or history[-2]["sha"]) == version:
            continue  # the ref was re-set to the same version: nothing changed
        speaker = m.group("speaker")
        events.append({
            "event": EVENT,
            "resource": {"prefect.resource.id": f"voicepipe.corpus.{speaker}"},
            "payload": {"speaker": speaker, "version": version, "sha": ref["sha"], "source": "minio-relay"},
        })
    return events


def token_ok(token: str, authorization: str | None) -> bool:
    """Whether `Authorization: Bearer <token>` carries `token` (constant-time); never true for an empty token."""
    scheme, _, given = (authorization or "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def create_app(store: ArtifactStore | None = None, emit: Emitter | None = None, token: str | None = None):
    """The relay as a FastAPI app. `store` defaults to the settings' store, `emit` to prefect's emit_event, `token`
    to $VOICEPIPE_RELAY_TOKEN; with no token every notification is refused (503)."""
    from fastapi import FastAPI, Header, HTTPException

    app = FastAPI(title="voicepipe MinIO -> Prefect event relay")
    token = token if token is not None else os.environ.get("VOICEPIPE_RELAY_TOKEN", "")
    if not token:
        log.warning("VOICEPIPE_RELAY_TOKEN is not set: the relay refuses every notification until it is")
    state: dict[str, Any] = {"store": store}

    def _store() -> ArtifactStore:
        if state["store"] is None:
            from voicepipe.store.core import open_store

            state["store"] = open_store()
        return state["store"]

    def _emit(**kw: Any) -> Any:
        if emit is not None:
            return emit(**kw)
        from prefect.events import emit_event

        return emit_event(**kw)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    def _serve(sha: str, name: str) -> Any:
        from fastapi.responses import Response

        from voicepipe.errors import StoreError
        from voicepipe.store.links import _name_and_type

        st = _store()
        try:
            data = st.get_bytes(sha)
        except StoreError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        _, ctype = _name_and_type(st, sha, name)
        immutable = {"Cache-Control": "public, max-age=31536000, immutable"}  # content-addressed
        return Response(content=data, media_type=ctype, headers=immutable)

    @app.get("/files/{sha}/{name:path}")
    def file_route(sha: str, name: str) -> Any:
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise HTTPException(status_code=404, detail=f"{sha}: not a sha256")
        return _serve(sha, name)

    @app.get("/trees/{sha}/{path:path}")
    def tree_file(sha: str, path: str) -> Any:
        from voicepipe.errors import StoreError
        from voicepipe.store.links import tree_entry

        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise HTTPException(status_code=404, detail=f"{sha}: not a sha256")
        try:
            entry = tree_entry(_store(), sha, path)
        except StoreError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        return _serve(entry, path.rsplit("/", 1)[-1])

    @app.post("/minio")
    def minio(body: dict[str, Any], authorization: str | None = Header(default=None)) -> dict[str, Any]:
        if not token:
            raise HTTPException(status_code=503, detail="relay not configured: set VOICEPIPE_RELAY_TOKEN (and the "
                                "same auth_token on MinIO's webhook)")  # fmt: skip
        if not token_ok(token, authorization):
            raise HTTPException(status_code=401, detail="bad or missing token")
        events = corpus_events(body, _store())
        for ev in events:
            _emit(**ev)
        return {"emitted": [e["payload"] for e in events]}

    return app


def __getattr__(name: str) -> Any:  # `uvicorn voicepipe.store.relay:app` builds the app on first access
    if name == "app":
        return create_app()
    raise AttributeError(name)
