"""`build_corpus`: podcast feed / folders / S3 / studio sessions -> a clean single-speaker corpus, per episode.

    check_models                                   preflight: every model the build loads, before any work
    list_episodes                                  feeds, folders, s3 prefixes (bad feeds -> rejects)
      -> per episode (chained futures)             fetch -> standardize -> separate -> diarize
      -> feed_check                                waits for every diarize: each episode's units judged against
                                                   the feed's voices (a co-host turn merged into the target: cut)
      -> per episode (chained futures)             segment -> transcribe -> filter -> encode
      -> assemble_corpus                           manifest, train/val jsonl, rejects, report
      -> per-step tables, report, store link       artifacts of the flow run
      -> notify_corpus_version                     corpus/<speaker>/latest; event voicepipe.corpus.changed

Every step is cached by input hash in the artifact store, so a rerun does no new work. A user-facing error (a
missing model, a bad enrollment clip) ends the run at once with its one line as the run's state message.
From the UI form: enrollment clips may be `store:<ref>` (after `voicepipe store put`), `s3://` or `http(s)://`;
`out` may stay empty (the corpus always lands in the store; `out` is then a scratch dir on the worker).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from tasks.common import failed, settle, task_runner
from tasks.corpus import (
    STEP_TASKS,
    assemble_corpus,
    feed_check,
    list_episodes,
    local_params,
    publish_corpus_artifacts,
    publish_rejected_report,
)
from tasks.events import notify_corpus_version
from tasks.preflight import check_models, corpus_needs
from voicepipe.corpus.assemble import CorpusRejected
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.steps import AFTER_FEED, BEFORE_FEED, STEPS, EpisodeState
from voicepipe.errors import VoicepipeError


def default_out(params: CorpusParams) -> CorpusParams:
    """`params` with `out` set: the given one, else `<home>/corpus/<speaker>/<flow run id>` on this worker."""
    if params.out:
        return params
    from prefect.runtime import flow_run

    from voicepipe.config import load_settings

    home = load_settings().home
    return params.model_copy(update={"out": str(home / "corpus" / params.speaker / (flow_run.id or "local"))})


@flow(name="build-corpus", task_runner=task_runner(workers=4))
def build_corpus(params: CorpusParams) -> dict[str, Any]:
    """Build the corpus described by `params`; returns the summary (version, utterances, hours, cache, ...)."""
    log = get_run_logger()
    recorded = params.model_dump(mode="json")  # what retrain-check rebuilds from (the refs, not worker paths)
    try:
        check_models(corpus_needs(params), params.store_url)
        params = default_out(params)
        local_params(params)  # enrollment clips: fetched (store:, s3://, http) and checked before any episode
    except VoicepipeError as e:
        return failed(e)
    sources, source_rejects = list_episodes(params)
    diarized, takes, every = [], [], []
    for src in sources:
        fut: Any = EpisodeState(source=src)
        for step in BEFORE_FEED:
            fut = STEP_TASKS[step].submit(params, fut)
            every.append(fut)
        diarized.append(fut)
    if params.studio:  # kept takes of studio sessions: the same steps, known transcripts
        from tasks.studio import TAKE_STEP_TASKS, list_studio_takes

        for take in list_studio_takes(params):
            fut = EpisodeState(source=take)
            for step in STEPS:
                fut = TAKE_STEP_TASKS[step].submit(params, fut)
                every.append(fut)
            takes.append(fut)
    err = settle(every)
    if err is not None:
        return failed(err)
    chains = []
    for state in feed_check(params, [f.result() for f in diarized]):  # waits for every episode's diarize
        fut = state
        for step in AFTER_FEED:
            fut = STEP_TASKS[step].submit(params, fut)
            every.append(fut)
        chains.append(fut)
    err = settle(every)
    if err is not None:
        return failed(err)
    chains += takes
    states = [f.result() for f in chains]
    try:
        result = assemble_corpus(params, states, source_rejects)
    except CorpusRejected as e:  # the operator reads why in the UI: the report of what was dropped, and the error
        publish_rejected_report(params, e)
        return failed(e)
    publish_corpus_artifacts(params, states, result)
    from voicepipe.store import open_store

    store = open_store(params.store_url) if params.store_url else open_store()
    changed = notify_corpus_version(store, params.speaker, result.version, result.dir_sha, recorded)
    log.info("corpus %s version %s: %d utterances, %.3f h (changed: %s)", params.speaker, result.version[:16],
             result.utterances, result.hours, changed)
    return {**result.model_dump(exclude={"report_md"}), "changed": changed}
