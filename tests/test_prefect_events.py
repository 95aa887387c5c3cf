"""voicepipe.corpus.changed: emitted only when a speaker's corpus version changes; store writes retried."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

from tasks.common import artifact_key, publish_link, publish_markdown, publish_table
from tasks.events import CORPUS_CHANGED, corpus_resource_id, latest_ref_name, notify_corpus_version
from voicepipe.errors import StoreError
from voicepipe.store import ArtifactStore, LocalBackend, open_store


def test_artifact_key_sanitized_and_noop_outside_runs() -> None:
    assert artifact_key("Corpus/Alice v2__Report") == "corpus-alice-v2-report"
    assert artifact_key("--x--") == "x"
    with pytest.raises(ValueError, match="no usable characters"):
        artifact_key("///")
    # outside a flow/task run nothing is created and nothing fails
    assert publish_markdown("k", "# md") is None
    assert publish_table("k", [{"a": 1}]) is None
    assert publish_link("k", "file:///x") is None


def test_artifacts_created_in_a_run(prefect_api) -> None:
    @flow(name="artifact-helpers")
    def f() -> str:
        from prefect.runtime import flow_run

        publish_markdown("Step Summary", "# hello", description="summary")
        publish_table("counts", {"kept": [3], "dropped": [1]})
        publish_link("stored/object", "s3://bucket/objects/ab/abc", "the object")
        return flow_run.id

    run_id = f()
    arts = {a["key"]: a for a in prefect_api.artifacts(run_id)}
    assert set(arts) == {"step-summary", "counts", "stored-object"}
    assert arts["step-summary"]["data"] == "# hello"
    assert arts["counts"]["type"] == "table" and "kept" in arts["counts"]["data"]
    assert "s3://bucket/objects/ab/abc" in arts["stored-object"]["data"]


def _corpus_obj(store: ArtifactStore, tag: str) -> str:
    return store.put_bytes(f"corpus tree {tag}".encode(), step="corpus.build", name=f"corpus-{tag}").sha256


def test_event_only_when_version_changes(prefect_api, tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    a, b = _corpus_obj(store, "a"), _corpus_obj(store, "b")
    url = f"file://{tmp_path / 'store'}"

    @flow(name="notify-test")
    def f(version: str, sha: str) -> bool:
        return notify_corpus_version(url, "Evt-Speaker", version, sha)

    assert f("v1", a) is True  # first version ever: changed
    assert f("v1", a) is False  # same version again: no event
    assert f("v2", b) is True  # new version
    ref = store.get_ref(latest_ref_name("evt-speaker"))
    assert ref["sha"] == b and ref["extra"]["version"] == "v2" and ref["extra"]["flow_run_id"]
    assert store.get_ref("corpus/evt-speaker/versions/v1")["sha"] == a

    evs = prefect_api.wait_events(CORPUS_CHANGED, 2, corpus_resource_id("evt-speaker"))
    assert [e["payload"]["version"] for e in evs] == ["v1", "v2"]
    assert evs[1]["payload"] == {"speaker": "evt-speaker", "version": "v2", "corpus_sha": b, "previous_version": "v1"}
    # and no third one shows up late for the unchanged rerun
    assert len(prefect_api.wait_events(CORPUS_CHANGED, 3, corpus_resource_id("evt-speaker"), timeout=3)) == 2


class FlakyBackend(LocalBackend):
    """A local backend that refuses its first `fail` writes the way S3 does under throttling."""

    def __init__(self, root: Path, fail: int) -> None:
        super().__init__(root)
        self.fail = fail
        self.refused = 0

    def put_bytes(self, key: str, data: bytes, *args, **kwargs) -> bool:  # type: ignore[override]
        if self.refused < self.fail:
            self.refused += 1
            raise StoreError(f"store {self.root}: write of {key} refused (503 SlowDown, simulated)")
        return super().put_bytes(key, data, *args, **kwargs)


def test_transient_store_failures_are_retried(prefect_api, tmp_path: Path) -> None:
    good = ArtifactStore(LocalBackend(tmp_path / "s"))
    sha = _corpus_obj(good, "r")
    backend = FlakyBackend(tmp_path / "s", fail=2)
    flaky = ArtifactStore(backend)
    task = notify_corpus_version.with_options(retry_delay_seconds=0)

    @flow(name="retry-test")
    def f():
        return task(flaky, "retry-speaker", "r1", sha, return_state=True)

    state = f()
    assert state.is_completed() and state.result() is True
    assert backend.refused == 2
    assert good.get_ref(latest_ref_name("retry-speaker"))["extra"]["version"] == "r1"
    # the task ran three times: two refused writes, then success
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        tr = c.read_task_run(state.state_details.task_run_id)
    assert tr.run_count == 3
    evs = prefect_api.wait_events(CORPUS_CHANGED, 1, corpus_resource_id("retry-speaker"))
    assert len(evs) == 1  # the event is emitted after the refused writes, so exactly once


def test_no_retry_budget_left_fails_clearly(prefect_api, tmp_path: Path) -> None:
    good = ArtifactStore(LocalBackend(tmp_path / "s"))
    sha = _corpus_obj(good, "x")
    backend = FlakyBackend(tmp_path / "s", fail=10)
    flaky = ArtifactStore(backend)
    task = notify_corpus_version.with_options(retry_delay_seconds=0)

    @flow(name="retry-exhausted")
    def f():
        return task(flaky, "gone-speaker", "x1", sha)

    with pytest.raises(StoreError, match="refused"):
        f()
    assert backend.refused == 4  # 1 try + 3 retries, then the error surfaces
    assert good.get_ref(latest_ref_name("gone-speaker")) is None


def test_input_cache_keys_on_content_not_handles(prefect_api, tmp_path: Path) -> None:
    from prefect import task

    from tasks.common import input_cache

    calls: list[str] = []

    @task(cache_policy=input_cache("store"), persist_result=True)
    def work(episode_sha: str, store: object) -> str:
        calls.append(episode_sha)
        return episode_sha.upper()

    @flow(name="input-cache")
    def f(shas: list[str], handle: str):
        return [work(s, object() if handle == "new" else handle, return_state=True) for s in shas]

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}):  # no earlier session's cache
        first = f(["aa", "bb"], "h1")
        assert [s.result() for s in first] == ["AA", "BB"] and calls == ["aa", "bb"]
        again = f(["aa", "cc"], "new")  # another store handle: excluded from the key -> "aa" is a cache hit
        assert [s.name for s in again] == ["Cached", "Completed"]
        assert [s.result() for s in again] == ["AA", "CC"] and calls == ["aa", "bb", "cc"]
