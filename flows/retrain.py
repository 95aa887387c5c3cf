"""`retrain_check` (scheduled weekly): rebuild every known speaker's corpus from its feed; retrain on a change.

    for each store ref corpus/<speaker>/latest:
        build_corpus(the same parameters as last time)   -> new episodes are processed, cached ones are reused
        version changed?  build_corpus emitted voicepipe.corpus.changed -> the train-and-evaluate trigger retrains
                          (or, with train_inline=True, e.g. in ephemeral mode with no server, train here)

The parameters come from the ref (`extra.build_params`, recorded by tasks.events.notify_corpus_version), or else
from the corpus tree's sidecar `params` in the store.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import EvaluateStep, TrainStep, train_and_evaluate
from tasks.common import publish_table, task_runner
from tasks.events import ref_version


def _build_params(store: Any, ref: dict[str, Any]) -> dict[str, Any] | None:
    """The corpus build parameters recorded for a speaker's latest corpus (None when nothing usable is stored)."""
    params = (ref.get("extra") or {}).get("build_params")
    if params:
        return dict(params)
    try:
        meta_params = store.meta(ref["sha"]).get("params") or {}
    except Exception:  # an unreadable sidecar means: cannot rebuild, reported in the table
        return None
    return dict(meta_params) if ("feeds" in meta_params or "sources" in meta_params) else None


@flow(name="retrain-check", log_prints=True)
def retrain_check(
    speakers: list[str] | None = None,
    store_url: str | None = None,
    train_inline: bool = False,
    train: TrainStep = TrainStep(),
    evaluate: EvaluateStep = EvaluateStep(),
    dask_address: str | None = None,
) -> list[dict[str, Any]]:
    """Rebuild each speaker's corpus from its feed; retrain only where the corpus version changed."""
    from flows.corpus import build_corpus
    from voicepipe.config import load_settings
    from voicepipe.corpus.config import CorpusParams
    from voicepipe.store import open_store

    log = get_run_logger()
    settings = load_settings(**({"store_url": store_url} if store_url else {}))
    store = open_store(settings)
    wanted = {s.lower() for s in speakers} if speakers else None
    builder = build_corpus.with_options(task_runner=task_runner(dask_address)) if dask_address else build_corpus
    rows: list[dict[str, Any]] = []
    for ref in store.list_refs("corpus/"):
        if not ref["name"].endswith("/latest"):
            continue
        speaker = (ref.get("extra") or {}).get("speaker") or ref["name"].split("/")[1]
        if wanted is not None and speaker not in wanted:
            continue
        before = ref_version(ref)
        params = _build_params(store, ref)
        if params is None:
            rows.append({"speaker": speaker, "before": before, "after": None, "changed": False,
                         "action": "skipped: no recorded build parameters"})
            continue
        if store_url:
            params["store_url"] = store_url
        built = builder(CorpusParams(**params))
        after = built["version"] if isinstance(built, dict) else built.version
        changed = after != before
        action = "unchanged"
        if changed:
            action = "retrain via voicepipe.corpus.changed trigger"
            if train_inline:
                train_and_evaluate(speaker=speaker, corpus_version=after, train=train, evaluate=evaluate,
                                   store_url=store_url)
                action = "retrained inline"
        log.info("%s: corpus %s -> %s (%s)", speaker, before, after, action)
        rows.append({"speaker": speaker, "before": before, "after": after, "changed": changed, "action": action})
    publish_table("retrain-check", rows or [{"speaker": "-", "action": "no speakers with a corpus yet"}],
                  description="weekly corpus refresh")
    return rows
