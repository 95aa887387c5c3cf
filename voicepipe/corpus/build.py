"""Set-up shared by the Prefect flow and plain-Python callers, plus `build_local` (no Prefect) for scripts.

The production path is the Prefect flow `flows.corpus.build_corpus` (the CLI runs it); it calls `prepare`,
then the step functions of `voicepipe.corpus.steps` task by task per episode, then `assemble`.
`build_local` runs the very same functions in a thread pool, for the benchmark and domain tests.
"""

from __future__ import annotations

import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from voicepipe.corpus.assemble import BuildResult, assemble
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.engines import Engines
from voicepipe.corpus.fetch import EpisodeSource, SourceReject, list_feed, list_folder, list_s3, select
from voicepipe.corpus.steps import AFTER_FEED, BEFORE_FEED, EpisodeState, StepContext, feed_check, run_steps
from voicepipe.errors import InputError


def list_sources(params: CorpusParams, settings: Any = None) -> tuple[list[EpisodeSource], list[SourceReject]]:
    """Every episode of every feed/folder/prefix (after date range and cap); unlistable sources are rejects."""
    episodes: list[EpisodeSource] = []
    rejects: list[SourceReject] = []
    for feed in params.feeds:
        try:
            episodes += list_feed(feed, params.timeout_s)
        except InputError as e:
            rejects.append(SourceReject(source=feed, reason=str(e)))
    for src in params.sources:
        try:
            episodes += list_s3(src, settings) if src.startswith("s3://") else list_folder(src)
        except InputError as e:
            rejects.append(SourceReject(source=src, reason=str(e)))
    # the same id listed twice (e.g. a feed given twice): keep the first
    seen: set[str] = set()
    unique = []
    for ep in episodes:
        if ep.id not in seen:
            seen.add(ep.id)
            unique.append(ep)
    return select(unique, since=params.since, until=params.until, max_episodes=params.max_episodes), rejects


def prepare(params: CorpusParams, settings: Any = None, store: Any = None, work: Path | None = None,
            progress: bool = True) -> StepContext:
    """Open the store, check the enrollment clips and build the (lazy) engines."""
    from voicepipe.config import load_settings
    from voicepipe.store import open_store

    if not params.feeds and not params.sources and not params.studio:
        raise InputError("corpus build: give at least one --feed, --source or --studio")
    settings = settings or load_settings()
    store = store or open_store(params.store_url or settings)
    if params.studio:
        from voicepipe.corpus.studio import with_enrollment

        params = with_enrollment(params, store)  # no --enroll: the session's first kept takes
    for p in params.enroll:
        if not Path(p).is_file():
            raise InputError(f"enrollment clip {p}: no such file")
    work = work or Path(tempfile.mkdtemp(prefix="voicepipe-corpus-"))
    ctx = StepContext(params=params, store=store, engines=Engines(params, settings), work=Path(work),
                      settings=settings, progress=progress)
    ctx.enroll_key  # noqa: B018 - stores the enrollment clips now (fails early on a bad one)
    return ctx


_CONTEXTS: dict[str, StepContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def context_for(params: CorpusParams, progress: bool = True) -> StepContext:
    """One StepContext (store, lazily loaded models, scratch dir) per process and parameter set.

    Prefect tasks receive only picklable inputs (params, episode state); each worker process, thread pool or
    Dask worker, builds its context once here and reuses it for every episode.
    """
    key = params.model_dump_json()
    with _CONTEXTS_LOCK:
        if key not in _CONTEXTS:
            _CONTEXTS[key] = prepare(params, progress=progress)
        return _CONTEXTS[key]


def build_local(params: CorpusParams, *, settings: Any = None, store: Any = None, progress: bool = True,
                ctx: StepContext | None = None) -> BuildResult:
    """The whole build without Prefect: list, every episode up to diarize in a thread pool, the feed check,
    the rest of the steps, assemble."""
    from tqdm.auto import tqdm

    ctx = ctx or prepare(params, settings, store, progress=progress)
    sources, source_rejects = list_sources(params, ctx.settings)
    takes = []
    if params.studio:
        from voicepipe.corpus.studio import list_takes, process_take

        takes = list_takes(params, ctx.store)
    if not sources and not source_rejects and not takes:
        raise InputError("corpus build: the feeds/sources list no episodes")
    with ThreadPoolExecutor(max_workers=params.workers) as pool:
        # every episode up to diarize, then the feed check across them all, then the rest (as the flow does)
        futures = [pool.submit(run_steps, ctx, EpisodeState(source=s), BEFORE_FEED) for s in sources]
        take_futures = [pool.submit(process_take, ctx, t) for t in takes]  # every step; no feed check
        states = [f.result() for f in tqdm(futures, desc="episodes up to diarize", disable=not progress)]
        futures = [pool.submit(run_steps, ctx, st, AFTER_FEED) for st in feed_check(ctx, states)]
        states = [f.result() for f in tqdm(futures, desc="episodes after the feed check", disable=not progress)]
        states += [f.result() for f in take_futures]
    return assemble(ctx, states, source_rejects)
