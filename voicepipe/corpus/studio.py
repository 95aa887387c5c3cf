"""Studio sessions as a corpus source: every kept take becomes one utterance with its KNOWN transcript.

A take runs through the same steps as a podcast episode, so it gets the same filters, codec encoding, report and
versioning (`assemble` sees it as a one-utterance episode):

    fetch (the take is already in the store) -> standardize -> separate (skipped: a studio take is clean)
    -> diarize (one voice per take, so no clustering; its cosine to the enrollment is checked)
    -> segment (one segment: the take's speech span + padding)
    -> transcribe (the prompt is the text; ASR only as a check: its confidence and WER vs the prompt)
    -> filter (the corpus filters; the words judged by WER vs the prompt <= `studio_max_wer`, not by the
       recogniser's confidence in its own guess) -> encode

With no `--enroll`, the enrollment clips are the session's first kept takes (about 30 s), so a studio session
alone, or a studio session plus a podcast feed of the same speaker, needs no separate reference recording.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.fetch import EpisodeSource
from voicepipe.corpus.steps import (
    SR16,
    STEPS,
    EpisodeState,
    StepContext,
    encode,
    guarded,
    quality_filter,
    run_step,
    standardize,
)
from voicepipe.errors import InputError

ENROLL_SECONDS = 30.0


class TakeSource(EpisodeSource):
    """A kept studio take, listed like an episode; `text` is what the speaker read."""

    text: str
    audio_sha: str
    speaker: str
    session: str
    verdict: str = "keep"  # what the studio's checks said (a kept take may have been kept against their advice)


def parse_session(spec: str, speaker: str) -> tuple[str, str]:
    """`SESSION` (of `speaker`) or `SPEAKER/SESSION` -> (speaker, session)."""
    from voicepipe.studio.session import check_name

    who, _, name = spec.rpartition("/")
    return check_name(who or speaker, "studio speaker"), check_name(name, "studio session")


def list_takes(params: CorpusParams, store: Any) -> list[TakeSource]:
    """The kept takes of every session in `params.studio`, in script order. A session that does not exist, or has
    no kept take, is an InputError naming it (a typo must not build an empty corpus silently)."""
    from voicepipe.studio.session import read_session

    out: list[TakeSource] = []
    for spec in params.studio:
        speaker, session = parse_session(spec, params.speaker)
        doc = read_session(store, speaker, session)
        if doc is None:
            raise InputError(f"studio session {speaker}/{session}: not in the store {getattr(store, 'url', '')} "
                             f"(record it with `voicepipe studio --speaker {speaker} --session {session}`)")
        kept = sorted((t for t in doc.takes if t.status == "kept"), key=lambda t: (t.prompt_index, t.n))
        if not kept:
            raise InputError(f"studio session {speaker}/{session}: no kept takes yet ({len(doc.takes)} recorded)")
        for t in kept:
            out.append(TakeSource(id=f"studio-{session}-{t.id}", title=t.text, url=f"studio://{speaker}/{session}/"
                                  f"{t.id}", published=t.created[:10], origin=f"studio:{speaker}/{session}",
                                  text=t.text, audio_sha=t.audio_sha, speaker=speaker, session=session,
                                  verdict=t.verdict))
    return out


def enrollment_from_takes(params: CorpusParams, store: Any, seconds: float = ENROLL_SECONDS) -> list[str]:
    """Local audio files of the first kept takes (about `seconds` in all; those the studio's checks passed first),
    for a build given no `--enroll`.

    They are written under the system temp dir named by their content hash, so every worker finds the same files
    and the enrollment key (a hash of the contents) is the same on every machine."""
    import soundfile as sf

    takes = sorted(list_takes(params, store), key=lambda t: t.verdict != "keep")  # takes the checks passed first
    folder = Path(tempfile.gettempdir()) / "voicepipe-studio-enroll"
    paths, total = [], 0.0
    for t in takes:
        ext = Path(store.meta(t.audio_sha).get("name") or "take.wav").suffix or ".wav"
        path = folder / f"{t.audio_sha}{ext}"
        if not path.is_file():
            store.get_file(t.audio_sha, path)
        paths.append(str(path))
        try:
            total += sf.info(str(path)).duration
        except (sf.LibsndfileError, RuntimeError):  # not a format libsndfile reads: count a typical take
            total += 5.0
        if total >= seconds:
            break
    return paths


def with_enrollment(params: CorpusParams, store: Any) -> CorpusParams:
    """`params`, with enrollment clips from the studio takes when it has studio sessions and no `enroll`."""
    if params.enroll or not params.studio:
        return params
    return params.model_copy(update={"enroll": enrollment_from_takes(params, store)})


# ------------------------------------------------------------------------------------------------ the take's steps
@guarded("fetch")
def fetch_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """The take's bytes are already in the store: check they are there and record them as the 'episode'."""
    src = state.source
    assert isinstance(src, TakeSource)

    def compute() -> dict:
        if not ctx.store.exists(src.audio_sha):
            raise InputError(f"studio take {src.url}: its audio {src.audio_sha[:12]} is missing from the store")
        meta = ctx.store.meta(src.audio_sha)
        return {"sha": src.audio_sha, "bytes": int(meta.get("size") or 0), "name": meta.get("name") or "take.wav"}

    res = run_step(ctx, state, "fetch", [src.audio_sha], {"studio_take": src.audio_sha}, compute)
    state.raw_sha, state.raw_bytes = res["sha"], res["bytes"]
    return state


@guarded("separate")
def separate_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """No source separation for a studio take (a clean, single-voice recording)."""
    state.results["separate"] = {"sha": state.results["standardize"]["sha"], "separated": False}
    state.cache["separate"] = "skip"
    return state


@guarded("diarize")
def diarize_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """A take is one person reading one prompt: its VAD speech is one target turn, with no per-episode clustering
    (a few seconds of one voice have no second speaker to be told apart from). The take's speech is embedded once
    and its cosine to the enrollment centroid must be at least `target_threshold`; it is recorded either way."""
    import numpy as np

    p = ctx.params
    params = {"studio": 1, "enroll": ctx.enroll_key, "min_silence_s": p.min_silence_s,
              "threshold": p.target_threshold}

    def compute() -> dict:
        wav = ctx.audio(state.audio_sha, SR16)
        speech = ctx.engines.vad.speech(wav, min_silence_s=p.min_silence_s)
        if not speech:
            return {"backend": "studio-take", "speech": [], "turns": [], "overlap": [], "labels": {},
                    "target_label": None, "speakers": [], "centroids": {}}
        spk = ctx.engines.speaker
        voice = np.concatenate([wav[int(a * SR16) : int(b * SR16)] for a, b in speech])
        sim = float(spk.similarity(spk.embed(voice), ctx.centroid))
        ok = sim >= p.target_threshold
        why = "" if ok else f"not the enrolled voice (cosine to enrollment {sim:.2f} < {p.target_threshold:g})"
        turns = [{"start": round(a, 3), "end": round(b, 3), "speaker": "S0", "target": ok, "reason": why}
                 for a, b in speech]
        talk = round(sum(b - a for a, b in speech), 2)
        return {"backend": "studio-take", "speech": speech, "turns": turns, "overlap": [], "labels": {"S0": sim},
                "target_label": "S0" if ok else None,
                "speakers": [{"label": "S0", "talk_s": talk, "enroll_sim": round(sim, 4), "target": ok}],
                "centroids": {}}

    run_step(ctx, state, "diarize", [state.audio_sha], params, compute)
    return state


@guarded("segment")
def segment_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """One segment: from the first to the last VAD speech of the take, padded by `pad_s` (within the take)."""
    p = ctx.params
    params = {"studio": 1, "pad_s": p.pad_s}

    def compute() -> dict:
        dia = state.results["diarize"]
        speech = [tuple(x) for x in dia["speech"]]
        if not speech:
            return {"segments": [], "speech_s": 0.0, "target_s": 0.0, "rejects": [
                {"start": 0.0, "end": round(state.seconds, 3), "step": "segment", "reason": "no speech in the take"}]}
        s, e = speech[0][0], speech[-1][1]
        target = sum(min(b, t["end"]) - max(a, t["start"]) for a, b in speech for t in dia["turns"]
                     if t["target"] and min(b, t["end"]) > max(a, t["start"]))
        seg = {"start": round(max(0.0, s - p.pad_s), 3), "end": round(min(state.seconds, e + p.pad_s), 3),
               "speech_s": round(e - s, 3)}
        return {"segments": [seg], "rejects": [], "speech_s": sum(b - a for a, b in speech), "target_s": target}

    run_step(ctx, state, "segment", [state.result_shas["diarize"]], params, compute)
    return state


@guarded("transcribe")
def transcribe_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """The known prompt is the text; the recogniser runs only as a check (confidence, transcript, WER)."""
    from voicepipe.corpus.steps import normalize_text
    from voicepipe.evaluate.metrics import wer_cer

    p = ctx.params
    src = state.source
    assert isinstance(src, TakeSource)
    params = {"studio": 1, "text": src.text, "backend": p.asr_backend,
              "model": p.asr_model if p.asr_backend == "whisper" else "en-us", "language": p.language}

    def compute() -> dict:
        wav = ctx.audio(state.audio_sha, SR16)
        out = []
        for seg in state.results["segment"]["segments"]:
            clip = wav[int(seg["start"] * SR16) : int(seg["end"] * SR16)]
            heard, conf = ctx.engines.asr.transcribe([clip], p.language)[0]
            wer = wer_cer([src.text], [heard])[0]
            out.append({"text": normalize_text(src.text), "asr_conf": round(float(conf), 4),
                        "asr_text": normalize_text(heard), "asr_wer": round(float(wer), 4)})
        return {"texts": out}

    run_step(ctx, state, "transcribe", [state.result_shas["segment"]], params, compute)
    return state


@guarded("filter")
def filter_take(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """The corpus filters (`quality_filter`), with the words judged by WER of the ASR vs the prompt instead of the
    recogniser's confidence in its own guess (which says nothing about a transcript that is known)."""
    state = quality_filter(ctx, state)
    if not state.ok:
        return state
    limit = ctx.params.studio_max_wer
    for seg, tr in zip(state.results["filter"]["segments"], state.results["transcribe"]["texts"], strict=True):
        seg["asr_wer"] = tr.get("asr_wer")
        seg["reasons"] = [r for r in seg["reasons"] if not r.startswith("asr_confidence")]
        if tr.get("asr_wer") is not None and tr["asr_wer"] > limit:
            heard = tr["asr_text"]
            seg["reasons"].append(f"asr_wer {tr['asr_wer']:.2f} > {limit:g} (heard \u201c{heard}\u201d)")
        seg["keep"] = not seg["reasons"]
    return state


TAKE_STEP_FUNCS: dict[str, Callable[[StepContext, EpisodeState], EpisodeState]] = {
    "fetch": fetch_take, "standardize": standardize, "separate": separate_take, "diarize": diarize_take,
    "segment": segment_take, "transcribe": transcribe_take, "filter": filter_take, "encode": encode,
}
assert list(TAKE_STEP_FUNCS) == STEPS, "a studio take runs every corpus step, in the same order"


def process_take(ctx: StepContext, source: TakeSource) -> EpisodeState:
    """All steps for one take, in order (what the flow does task by task)."""
    state = EpisodeState(source=source)
    for step in STEPS:
        state = TAKE_STEP_FUNCS[step](ctx, state)
    return state
