"""`build_corpus`: podcast feed / folders / S3 / studio sessions -> a clean single-speaker corpus, per episode.

    list_episodes                                  feeds, folders, s3 prefixes (bad feeds -> rejects)
      -> per episode (thread pool, chained futures):
           fetch -> standardize -> separate -> diarize -> segment -> transcribe -> filter -> encode
      -> assemble_corpus                           manifest, train/val jsonl, rejects, report (+ artifacts)
      -> notify_corpus_version                     corpus/<speaker>/latest; event voicepipe.corpus.changed

Every step is cached by input hash in the artifact store, so a rerun does no new work.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from tasks.common import task_runner
from tasks.corpus import STEP_TASKS, assemble_corpus, list_episodes
from tasks.events import notify_corpus_version
from voicepipe.corpus.build import context_for
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.steps import STEPS, EpisodeState


@flow(name="build-corpus", task_runner=task_runner(workers=4))
def build_corpus(params: CorpusParams) -> dict[str, Any]:
    """Build the corpus described by `params`; returns the summary (version, utterances, hours, cache, ...)."""
    log = get_run_logger()
    sources, source_rejects = list_episodes(params)
    chains = []
    for src in sources:
        fut: Any = EpisodeState(source=src)
        for step in STEPS:
            fut = STEP_TASKS[step].submit(params, fut)
        chains.append(fut)
    if params.studio:  # kept takes of studio sessions: the same steps, known transcripts
        from tasks.studio import TAKE_STEP_TASKS, list_studio_takes

        for take in list_studio_takes(params):
            fut = EpisodeState(source=take)
            for step in STEPS:
                fut = TAKE_STEP_TASKS[step].submit(params, fut)
            chains.append(fut)
    states = [f.result() for f in chains]
    result = assemble_corpus(params, states, source_rejects)
    ctx = context_for(params)
    changed = notify_corpus_version(ctx.store, params.speaker, result.version, result.dir_sha,
                                    params.model_dump(mode="json"))
    log.info("corpus %s version %s: %d utterances, %.3f h (changed: %s)", params.speaker, result.version[:16],
             result.utterances, result.hours, changed)
    return {**result.model_dump(exclude={"report_md"}), "changed": changed}
