"""build_corpus's per-episode ingestion on a Dask cluster through prefect-dask's DaskTaskRunner."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.prefect import corpus_clips, corpus_params

pytestmark = pytest.mark.slow


def test_task_runner_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from tasks.common import task_runner

    monkeypatch.delenv("VOICEPIPE_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    assert isinstance(task_runner("local"), DaskTaskRunner)
    monkeypatch.setenv("VOICEPIPE_DASK_ADDRESS", "tcp://127.0.0.1:1")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:1"


def test_build_corpus_on_local_dask_cluster(prefect_api, prefect_podcast, reference_corpus, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster, get_task_stream

    from flows.corpus import build_corpus
    from tasks.common import task_runner
    from voicepipe.corpus.config import CorpusParams

    params = CorpusParams(**corpus_params(prefect_podcast, "daskspeaker", f"file://{tmp_path / 'store'}",
                                          tmp_path / "out"))
    n_eps = len(prefect_podcast["truth"].episodes)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        with get_task_stream(client) as stream:
            result = build_corpus.with_options(task_runner=task_runner(cluster.scheduler_address))(params)
        ran = stream.data
        workers = set(client.scheduler_info()["workers"])
    res = result if isinstance(result, dict) else result.model_dump()
    assert res["episodes_ok"] == n_eps and res["episodes_rejected"] == 0
    # the episode tasks really ran on the cluster's workers (both of them), not in the flow's thread pool
    assert len(ran) >= n_eps, ran
    assert len(workers) == 2 and {t["worker"] for t in ran} == workers, ran
    # same clips as the thread-pool build of the same inputs
    assert corpus_clips(tmp_path / "out") == reference_corpus["clips"]
