"""Corpus purity (issue 12) on the default path a new user gets: `voicepipe corpus build` with separation on
(`separator: auto`, DeepFilterNet3 on a CPU: Demucs' weights are not here), pocketsphinx, a tiny codec.

The same CI feed as `test_corpus_purity.py` (espeak, 24 s episodes, seed 5), with the "all" episode too (a
music bed, a close co-host's backchannels and crosstalk, and an ad break in one episode): one build, each scenario
scored against its known timeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicepipe.corpus.synthetic import SCENARIOS, build_feed, make_scenario_podcast, score_corpus

# issue 12's target (purity >= 0.99, recall >= 0.8) is NOT met here yet; this build, 2026-12-05 (twenty-first
# session; benchmarks/RESULTS.md, corpus purity): backchannels 0.998 / 0.762 and crosstalk 1.000 / 0.649, the two
# recall misses `test_corpus_purity.py` explains (a 1.6 s target segment the feed check judged nearer another
# episode's close co-host; the target's first turn clustered apart). Every other cell meets both targets, music
# included (1.000 / 0.962; without separation 1.000 / 0.125), and so does the whole feed (0.999 / 0.870).
NOT_MET = {"backchannels", "crosstalk"}


@pytest.fixture(scope="module")
def default_build(tmp_path_factory, tiny_tts_dir):
    root = tmp_path_factory.mktemp("purity-default")
    truth = make_scenario_podcast(root / "pod", SCENARIOS, engine="espeak", episode_seconds=24.0, seed=5)
    out = Path(build_feed(truth, root, tiny_tts_dir, workers=2).out)
    return {"truth": truth, "out": out, "score": score_corpus(out, truth)}


def test_the_default_build_separates_with_deepfilternet(default_build):
    summary = json.loads((default_build["out"] / "corpus.json").read_text())
    assert summary["params"]["separate"] and summary["params"]["separator"] == "auto"
    assert summary["separation"] == "deepfilternet"  # auto, with no Demucs weights here
    assert "- separation: DeepFilterNet3 speech enhancement" in (default_build["out"] / "report.md").read_text()


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(reason="issue 12 target not met yet on this feed", strict=True))
    if s in NOT_MET else s for s in SCENARIOS if s != "absent"
])
def test_each_scenario_meets_purity_and_recall_on_the_default_path(default_build, scenario):
    ep = default_build["score"]["per_episode"][f"{scenario}-1"]
    assert ep["purity"] >= 0.99, ep
    assert ep["recall"] >= 0.8, ep


def test_the_whole_feed_meets_both_targets_and_the_absent_episode_keeps_nothing(default_build):
    score = default_build["score"]
    assert score["purity"] >= 0.99 and score["recall"] >= 0.8, {k: score[k] for k in ("purity", "recall")}
    rows = [json.loads(x) for x in (default_build["out"] / "manifest.jsonl").read_text().splitlines()]
    assert not [r for r in rows if r["episode"] == "absent-1"]


def test_separation_takes_the_music_bed_out_so_the_snr_gate_drops_none_of_the_target(default_build):
    """Without separation the bed under the target's speech fails the 10 dB SNR gate (`test_corpus_purity.py`:
    12 of 14 s of music-1's target). Separated, no utterance of any episode fails it, the bed's episode included,
    and every kept row measures at least the gate."""
    out = default_build["out"]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert not [r for r in rejects if "snr" in r["reason"]], rejects
    eps = {e["episode"]: e for e in json.loads((out / "corpus.json").read_text())["episode_speakers"]}
    assert eps["music-1"]["snr_dropped_s"] == 0.0 and eps["music-1"]["kept_s"] > 10.0
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert rows and all(r["snr_db"] >= 10 for r in rows)
    assert not any(x.startswith("**The SNR gate dropped") for x in (out / "report.md").read_text().splitlines())
