"""Prefect tasks of the corpus build: thin wrappers around `voicepipe.corpus` (one task per step).

Caching is the store's step memo (works across machines), so Prefect's own result cache is off. Tasks take
only picklable inputs (the build params and the episode state); each process builds its models once
(`context_for`). A bad episode never fails a task: the step records the reason on the state.

Every task reads the network or writes the store, so all carry the shared `IO_RETRIES`: a flaky feed, S3 or
MinIO error is retried. A retry is safe: store writes are content-addressed and atomic (the same bytes land
under the same sha, a partial upload never becomes visible), a step's memo entry is written last (after its
outputs), and a step task works on a copy of its input state, so a failed try leaves nothing half-applied for
the next one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import IO_RETRIES, publish_link, publish_markdown, publish_table
from voicepipe.corpus.assemble import BuildResult, CorpusRejected, assemble, inline_images
from voicepipe.corpus.build import context_for as _context_for
from voicepipe.corpus.build import list_sources
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.fetch import EpisodeSource, SourceReject
from voicepipe.corpus.steps import BUILD_STEPS, STEP_FUNCS, STEPS, EpisodeState
from voicepipe.corpus.steps import feed_check as _feed_check

_LOCAL: dict[str, CorpusParams] = {}


def local_params(params: CorpusParams) -> CorpusParams:
    """`params` with each enrollment clip given as `store:…`, `s3://…` or `http(s)://…` (from a UI form) fetched
    to this machine's input cache (`voicepipe.store.inputs`); once per process and parameter set."""
    from voicepipe.config import load_settings
    from voicepipe.store.inputs import localize

    key = params.model_dump_json()
    if key not in _LOCAL:
        settings = load_settings(**({"store_url": params.store_url} if params.store_url else {}))
        _LOCAL[key] = params.model_copy(update={"enroll": localize(params.enroll, settings, what="enrollment clip")})
    return _LOCAL[key]


def context_for(params: CorpusParams) -> Any:
    """The process's StepContext for `params` (`voicepipe.corpus.build.context_for`), enrollment fetched here."""
    return _context_for(local_params(params))


@task(name="corpus-list-episodes", cache_policy=NO_CACHE, **IO_RETRIES)
def list_episodes(params: CorpusParams) -> tuple[list[EpisodeSource], list[SourceReject]]:
    """Episodes of every feed/folder/prefix; sources that cannot be listed come back as rejects."""
    ctx = context_for(params)
    sources, rejects = list_sources(params, ctx.settings)
    publish_table(
        f"corpus-{params.speaker}-fetch-list",
        [{"episode": s.id, "title": s.title, "published": s.published or "", "url": s.url} for s in sources]
        + [{"episode": "", "title": "REJECTED", "published": "", "url": f"{r.source}: {r.reason}"} for r in rejects],
        description="episodes listed",
    )
    return sources, rejects


def _step_task(step: str) -> Any:
    fn = STEP_FUNCS[step]

    def run(params: CorpusParams, state: EpisodeState) -> EpisodeState:
        # a copy: the step fills in its state as it goes, and a retried try must start from the untouched input
        return fn(context_for(params), state.model_copy(deep=True))

    run.__name__ = f"corpus_{step}"
    run.__doc__ = f"Corpus step `{step}` for one episode: {fn.__doc__.splitlines()[0] if fn.__doc__ else ''}"
    return task(name=f"corpus-{step}", task_run_name=f"{step}-{{state.source.id}}", cache_policy=NO_CACHE,
                **IO_RETRIES)(run)


STEP_TASKS: dict[str, Any] = {step: _step_task(step) for step in STEPS}


@task(name="corpus-feed-check", cache_policy=NO_CACHE, **IO_RETRIES)
def feed_check(params: CorpusParams, states: list[EpisodeState]) -> list[EpisodeState]:
    """The barrier between diarize and segment: every episode's units judged against the feed's voices."""
    return _feed_check(context_for(params), [st.model_copy(deep=True) for st in states])


@task(name="corpus-assemble", cache_policy=NO_CACHE, **IO_RETRIES)
def assemble_corpus(
    params: CorpusParams, states: list[EpisodeState], source_rejects: list[SourceReject]
) -> BuildResult:
    """Write the corpus and store it (the flow attaches the per-step tables and the report to its run)."""
    return assemble(context_for(params), states, source_rejects)


def publish_corpus_artifacts(params: CorpusParams, states: list[EpisodeState], result: BuildResult) -> None:
    """One table per step (a row per episode), the report and a browser link to the stored corpus; called from
    the flow body, so they hang on the flow run (its Artifacts tab), not on one task."""
    from voicepipe.store.links import tree_link

    spk = params.speaker
    for step in BUILD_STEPS:
        rows = []
        for st in states:
            res = st.results.get(step) or {}
            rows.append({
                "episode": st.source.id,
                "cache": st.cache.get(step, "-"),
                "seconds_of_work": round(st.timings.get(step, 0.0), 2),
                "status": "rejected: " + (st.rejected or "") if st.reject_step == step else ("ok" if st.ok or (
                    st.reject_step and BUILD_STEPS.index(st.reject_step) > BUILD_STEPS.index(step)) else "-"),
                "output": (res.get("sha") or st.result_shas.get(step) or "")[:16],
            })
        publish_table(f"corpus-{spk}-{step}", rows, description=f"corpus step {step}, per episode")
    # the UI cannot resolve report.md's relative PNG links: its artifact copy carries the (small) plots inline
    publish_markdown(f"corpus-{spk}-report", inline_images(result.report_md, Path(result.out)),
                     description=f"corpus {spk} {result.version[:16]}")
    ctx = context_for(params)
    publish_link(f"corpus-{spk}-report-file", tree_link(ctx.store, result.dir_sha, "report.md", ctx.settings),
                 description=f"report.md of corpus {result.version[:16]} (tree {result.dir_sha[:16]}) in the store")


def publish_rejected_report(params: CorpusParams, err: CorpusRejected) -> None:
    """The report of a build that kept almost nothing, on the flow run (its plots inline): why, gate by gate."""
    publish_markdown(f"corpus-{params.speaker}-report", inline_images(err.report_md, Path(err.out)),
                     description=f"corpus {params.speaker}: build rejected, kept almost nothing")
