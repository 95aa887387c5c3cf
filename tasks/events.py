"""The `voicepipe.corpus.changed` event: emitted when a speaker's corpus version differs from the last one.

The last version is kept in the store as the ref `corpus/<speaker>/latest` (`extra.version`), and every
version ever built as `corpus/<speaker>/versions/<version>` (what `voicepipe audit CORPUS_VERSION` reads), written
once by the run that first built it; later runs that find the same version are recorded beside it as
`corpus/<speaker>/rebuilds/<version>/<flow run id>`.
`prefect.yaml`'s `train-and-evaluate` deployment has a trigger on this event that passes the payload's
`speaker` and `version` as flow parameters. On a self-hosted server this is how "retrain when the corpus
changes" works (webhooks are a Prefect Cloud feature).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.events import emit_event

from tasks.common import IO_RETRIES, publish_markdown

CORPUS_CHANGED = "voicepipe.corpus.changed"


def latest_ref_name(speaker: str) -> str:
    """Store ref holding the speaker's last corpus version."""
    return f"corpus/{speaker}/latest"


def version_ref_name(speaker: str, version: str) -> str:
    """Store ref recording one corpus version of a speaker (kept forever, for audits)."""
    return f"corpus/{speaker}/versions/{version}"


def rebuild_ref_name(speaker: str, version: str, run: str) -> str:
    """Store ref recording a later run that built an already-known corpus version (the version ref stays)."""
    return f"corpus/{speaker}/rebuilds/{version}/{run}"


def corpus_resource_id(speaker: str) -> str:
    """Prefect event resource id for a speaker's corpus (triggers match on `voicepipe.corpus.*`)."""
    return f"voicepipe.corpus.{speaker}"


def _open(store: Any) -> Any:
    """Accept an open ArtifactStore, a store URL or Settings."""
    if hasattr(store, "get_ref") and hasattr(store, "set_ref"):
        return store
    from voicepipe.store import open_store

    return open_store(store)


def ref_version(ref: dict[str, Any] | None) -> str | None:
    """The corpus version recorded in a `corpus/<speaker>/latest` ref (None when there is none)."""
    if not ref:
        return None
    extra = ref.get("extra") or {}
    return extra.get("version") or ref.get("version")


def _run_ids() -> dict[str, str]:
    """Flow/task run ids of the caller, recorded with the ref so an audit can go back to the run."""
    from prefect.context import FlowRunContext, TaskRunContext

    out: dict[str, str] = {}
    fctx = FlowRunContext.get()
    if fctx is not None and fctx.flow_run is not None:
        out["flow_run_id"] = str(fctx.flow_run.id)
    tctx = TaskRunContext.get()
    if tctx is not None:
        out["task_run_id"] = str(tctx.task_run.id)
    return out


def record_corpus_version(
    store: Any, speaker: str, version: str, corpus_sha: str, build_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compare `version` with the speaker's last one; on a change emit the event, then move the ref.

    The event is emitted BEFORE the ref moves: if the ref write fails, a retry emits again (a duplicate
    trigger) rather than never (a lost retrain). `build_params` (the CorpusParams as a dict) are kept in the
    refs so `retrain_check` can rebuild the corpus later. Returns `{changed, previous_version, event_id}`.
    """
    st = _open(store)
    speaker = speaker.lower()
    prev = ref_version(st.get_ref(latest_ref_name(speaker)))
    ids = _run_ids()
    extra = {"version": version, "speaker": speaker, **ids}
    if build_params is not None:
        extra["build_params"] = build_params
    # the version ref is written once, by the build that made the version: a later run that finds the same version
    # (an unchanged rebuild, whose tree differs only in its report's cache column) is recorded beside it
    if st.get_ref(version_ref_name(speaker, version)) is None:
        st.set_ref(version_ref_name(speaker, version), corpus_sha, extra=extra, if_absent=True)
    else:
        run_key = ids.get("flow_run_id") or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        st.set_ref(rebuild_ref_name(speaker, version, run_key), corpus_sha,
                   extra={**extra, "rebuild_of": version_ref_name(speaker, version)})
    if prev == version:
        return {"changed": False, "previous_version": prev, "event_id": None}
    event = emit_event(
        CORPUS_CHANGED,
        resource={"prefect.resource.id": corpus_resource_id(speaker), "prefect.resource.name": speaker},
        payload={"speaker": speaker, "version": version, "corpus_sha": corpus_sha, "previous_version": prev},
        related=(
            [{"prefect.resource.id": f"prefect.flow-run.{ids['flow_run_id']}", "prefect.resource.role": "flow-run"}]
            if "flow_run_id" in ids
            else None
        ),
    )
    st.set_ref(latest_ref_name(speaker), corpus_sha, extra=extra)
    return {"changed": True, "previous_version": prev, "event_id": str(event.id) if event else None}


@task(name="notify-corpus-version", **IO_RETRIES)
def notify_corpus_version(
    store: Any, speaker: str, version: str, corpus_sha: str, build_params: dict[str, Any] | None = None
) -> bool:
    """Prefect task for the end of `build_corpus`: emit `voicepipe.corpus.changed` if the version is new.

    `store` is a store URL, Settings or an open ArtifactStore; `corpus_sha` is the `put_dir` sha of the
    corpus directory; `build_params` the build's parameters (`params.model_dump(mode="json")`), which
    `retrain_check` reuses. Returns True when the version changed (and the event was emitted).
    """
    res = record_corpus_version(store, speaker, version, corpus_sha, build_params)
    if res["changed"]:
        md = (
            f"### Corpus changed: `{speaker}`\n\nversion `{version}` (was `{res['previous_version']}`), "
            f"corpus `{corpus_sha}`\n\nEmitted `{CORPUS_CHANGED}` (event `{res['event_id']}`)."
        )
    else:
        md = f"### Corpus unchanged: `{speaker}`\n\nversion `{version}` is the latest already; no event emitted."
    publish_markdown(f"corpus-event-{speaker}", md, description="voicepipe.corpus.changed decision")
    return bool(res["changed"])
