"""End-to-end corpus builds through the Prefect flow `build_corpus` on the synthetic podcast (CPU).

Real models here: resemblyzer speaker encoder and silero VAD (weights in their wheels), pocketsphinx ASR
(English model in its wheel). Tiny random model: the Qwen3-TTS 12 Hz codec (plumbing only: codes have the
right shape, not meaning). Separation is off (`separate=False`): a random-weight Demucs would mangle the audio;
its plumbing is tested in test_corpus_plumbing.py.
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
    for m in manifest:
        assert 1.0 <= m["duration"] <= 15.0 and m["speaker_sim"] >= 0.82
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["version"] == builds["first"]["version"] and summary["utterances"] == len(manifest)
    assert "Minutes in / out per step" in (out / "report.md").read_text()


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
    assert added["utterances"] > first["utterances"]
    assert added["changed"]


def test_every_step_left_a_prefect_artifact(builds):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="corpus-target-")), limit=200)}
    steps = ("fetch", "standardize", "separate", "diarize", "segment", "transcribe", "filter", "encode")
    assert {f"corpus-target-{s}" for s in steps} | {"corpus-target-report", "corpus-target-dir"} <= keys, keys
