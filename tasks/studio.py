"""Prefect tasks for studio takes in the corpus build: thin wrappers around `voicepipe.corpus.studio`.

A kept take runs the same steps as an episode (`TAKE_STEP_FUNCS`: the corpus steps, with the take's own fetch,
segment and transcribe), one task per step, exactly like `tasks.corpus.STEP_TASKS`.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import IO_RETRIES
from voicepipe.corpus.build import context_for
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.steps import STEPS, EpisodeState
from voicepipe.corpus.studio import TAKE_STEP_FUNCS, TakeSource, list_takes


@task(name="corpus-list-studio-takes", cache_policy=NO_CACHE, **IO_RETRIES)  # InputError is not retried
def list_studio_takes(params: CorpusParams) -> list[TakeSource]:
    """The kept takes of the build's studio sessions."""
    return list_takes(params, context_for(params).store)


def _take_task(step: str) -> Any:
    fn = TAKE_STEP_FUNCS[step]

    def run(params: CorpusParams, state: EpisodeState) -> EpisodeState:
        return fn(context_for(params), state.model_copy(deep=True))  # a retried try starts from the same input

    run.__name__ = f"corpus_take_{step}"
    run.__doc__ = f"Corpus step `{step}` for one studio take."
    return task(name=f"corpus-take-{step}", task_run_name=f"{step}-{{state.source.id}}", cache_policy=NO_CACHE,
                **IO_RETRIES)(run)


TAKE_STEP_TASKS: dict[str, Any] = {step: _take_task(step) for step in STEPS}
