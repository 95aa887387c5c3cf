"""Steps 1-8 of the corpus build, one plain function per step, each cached through the store's step memo, and
the feed check between diarize and segment (`feed_check`: the one place the build waits for every episode).

Every step takes the episode's `EpisodeState`, looks its input key up in `store.memo_get`, and on a miss
computes, stores its outputs (audio as FLAC objects, results as JSON objects whose sidecars list their
inputs) and records the memo. A rerun therefore does no new work, on this machine or any other that shares
the store. A bad episode raises `InputError` inside a step; the step records the reason on the state and
every later step passes the state through untouched.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from pydantic import BaseModel, Field

from voicepipe.audio import (
    clipped_fraction,
    estimate_snr_db,
    load_audio,
    load_audio_checked,
    loudness_lufs,
    normalize_loudness,
    resample,
    save_wav,
)
from voicepipe.corpus import intervals
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.engines import Engines, Enhancer
from voicepipe.corpus.fetch import EpisodeSource, download
from voicepipe.errors import InputError

SR = 24000
SR16 = 16000
# bump a step's version when its code changes what it produces: old memo entries then miss
STEP_VERSIONS = {
    "fetch": 1, "standardize": 1, "separate": 1, "diarize": 3, "segment": 2, "transcribe": 1, "filter": 2,
    "encode": 1,
}
STEPS = list(STEP_VERSIONS)  # each episode's own steps, in order
# between diarize and segment, the build waits for every episode: `feed_check` judges each episode's units against
# the voices of the whole feed (a barrier, not an episode's own step)
FEED_STEP, FEED_VERSION = "feed", 1
BEFORE_FEED, AFTER_FEED = STEPS[: STEPS.index("segment")], STEPS[STEPS.index("segment") :]
BUILD_STEPS = [*BEFORE_FEED, FEED_STEP, *AFTER_FEED]  # what a build runs, as its report and tables list it
FEED_CUT_REASON = "nearer another voice of the feed than the feed's target voice (a unit of one voice)"
FAR_TARGET_REASON = "the episode's target speaker far from the enrollment"  # `FilterConfig.min_target_speaker_sim`


class EpisodeState(BaseModel):
    """What one episode has become so far; passed from step to step (and task to task)."""

    source: EpisodeSource
    raw_sha: str | None = None
    raw_bytes: int = 0
    seconds: float = 0.0
    results: dict[str, Any] = Field(default_factory=dict)  # step -> its JSON result
    result_shas: dict[str, str] = Field(default_factory=dict)  # step -> sha of that JSON in the store
    cache: dict[str, str] = Field(default_factory=dict)  # step -> hit | miss | skip
    timings: dict[str, float] = Field(default_factory=dict)  # step -> wall seconds (misses only)
    rejected: str | None = None  # the reason the whole episode was dropped
    reject_step: str | None = None

    @property
    def ok(self) -> bool:
        return self.rejected is None

    @property
    def audio_sha(self) -> str | None:
        """The audio the segments are cut from: vocals when separated, else the standardized episode."""
        sep = self.results.get("separate") or self.results.get("standardize")
        return sep["sha"] if sep else None

    @property
    def speaker_audio_sha(self) -> str | None:
        """The audio the speaker decisions hear: the unenhanced episode when DeepFilterNet3 separated it (speaker
        and segmentation models are trained on real, noisy speech; an enhancer's artifacts move their embeddings),
        else the same audio as `audio_sha`."""
        sep = self.results.get("separate") or {}
        return sep.get("speaker_sha") or self.audio_sha


@dataclass
class StepContext:
    """What every step needs: parameters, the store, the models, a scratch dir and the enrollment centroid."""

    params: CorpusParams
    store: Any
    engines: Engines
    work: Path
    settings: Any = None
    _centroid: np.ndarray | None = None
    _window_centroid: np.ndarray | None = None
    _enroll_key: str | None = None
    _audio_cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    progress: bool = True

    # ---- enrollment
    def enroll_shas(self) -> list[str]:
        shas = []
        for p in self.params.enroll:
            if not Path(p).is_file():
                raise InputError(f"enrollment clip {p}: no such file")
            shas.append(self.store.put_file(p, step="corpus.enroll", params={"speaker": self.params.speaker}).sha256)
        return shas

    @property
    def enroll_key(self) -> str:
        if self._enroll_key is None:
            from voicepipe.models import choose_speaker_model  # the centroid and every score depend on the model

            self._enroll_key = _hash({"enroll": sorted(self.enroll_shas()),
                                      "speaker_model": choose_speaker_model(settings=self.settings).key})
        return self._enroll_key

    @property
    def centroid(self) -> np.ndarray:
        """The target speaker's enrollment centroid (fp32), memoized by the enrollment clips' hashes."""
        with self._lock:
            if self._centroid is None:
                key = self.enroll_key
                sha = self.store.memo_get("corpus.enroll", key)
                if sha:
                    self._centroid = np.asarray(self.store.get_json(sha)["centroid"], dtype=np.float32)
                else:
                    wavs = [load_audio(p, SR16) for p in self.params.enroll]
                    c = self.engines.speaker.centroid(wavs)
                    ref = self.store.put_json({"centroid": [float(x) for x in c]}, step="corpus.enroll",
                                              inputs=self.enroll_shas(), params={"speaker": self.params.speaker})
                    self.store.memo_put("corpus.enroll", key, ref.sha256)
                    self._centroid = c
            return self._centroid

    @property
    def window_centroid(self) -> np.ndarray:
        """The enrollment centroid in the space the diarize windows are embedded in (`Engines.window_embeddings`),
        computed once per build."""
        other = self.engines.fused
        if other is None:
            return self.centroid
        own = self.centroid
        with self._lock:
            if self._window_centroid is None:
                from voicepipe.corpus.speakers import fuse

                self._window_centroid = fuse(own, other.centroid([load_audio(p, SR16) for p in self.params.enroll]))
            return self._window_centroid

    # ---- audio objects
    def audio(self, sha: str, sr: int) -> np.ndarray:
        """A stored audio object as float32 mono at `sr` (small in-process LRU)."""
        key = (sha, sr)
        with self._lock:
            if key in self._audio_cache:
                self._audio_cache.move_to_end(key)
                return self._audio_cache[key]
        path = self.work / "objects" / f"{sha}.flac"
        if not path.exists():
            self.store.get_file(sha, path)
        wav = load_audio(path, sr)
        with self._lock:
            self._audio_cache[key] = wav
            while len(self._audio_cache) > 8:
                self._audio_cache.popitem(last=False)
        return wav

    def put_audio(self, wav: np.ndarray, *, step: str, inputs: list[str], params: dict) -> str:
        """Store a 24 kHz waveform as FLAC (lossless, about half the size of wav); returns its sha."""
        tmp = self.work / "tmp" / f"{step}-{threading.get_ident()}-{time.monotonic_ns()}.flac"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(tmp), np.clip(wav, -1, 1), SR, format="FLAC", subtype="PCM_16")
        sha = self.store.put_file(tmp, step=step, inputs=inputs, params=params, content_type="audio/flac").sha256
        dest = self.work / "objects" / f"{sha}.flac"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(dest)
        return sha


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def run_step(
    ctx: StepContext, state: EpisodeState, step: str, inputs: list[str], params: dict, compute: Callable[[], dict]
) -> dict:
    """Memoized step: return the stored result for (step, inputs, params) or compute, store and record it."""
    params = {**params, "_v": FEED_VERSION if step == FEED_STEP else STEP_VERSIONS[step]}
    key = _hash({"inputs": inputs, "params": params})
    memo = f"corpus.{step}"
    sha = ctx.store.memo_get(memo, key)
    if sha is not None:
        result = ctx.store.get_json(sha)
        state.cache[step] = "hit"
    else:
        t0 = time.perf_counter()
        result = compute()
        sha = ctx.store.put_json(result, step=memo, inputs=inputs, params=params, name=state.source.id).sha256
        ctx.store.memo_put(memo, key, sha)
        state.cache[step] = "miss"
        state.timings[step] = time.perf_counter() - t0
    state.results[step] = result
    state.result_shas[step] = sha
    return result


def guarded(step: str) -> Callable:
    """Skip rejected episodes; turn an InputError inside the step into a recorded episode rejection."""

    def wrap(fn: Callable[[StepContext, EpisodeState], EpisodeState]) -> Callable:
        def inner(ctx: StepContext, state: EpisodeState) -> EpisodeState:
            if not state.ok:
                return state
            try:
                return fn(ctx, state)
            except InputError as e:
                state.rejected, state.reject_step = str(e), step
                return state

        inner.__name__ = fn.__name__
        inner.__doc__ = fn.__doc__
        return inner

    return wrap


# ------------------------------------------------------------------------------------------------ 1. fetch
@guarded("fetch")
def fetch(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Download (or read) the episode and store its bytes; memo key = URL + declared size (+ mtime for files)."""
    src = state.source
    ident: dict[str, Any] = {"url": src.url, "declared_bytes": src.declared_bytes}
    local = Path(src.url)
    if not src.url.startswith(("http://", "https://", "s3://")) and local.is_file():
        st = local.stat()
        ident.update(size=st.st_size, mtime_ns=st.st_mtime_ns)

    def compute() -> dict:
        name = Path(src.url.split("?")[0]).name or "episode"
        dest = ctx.work / "downloads" / f"{_hash(src.url)[:16]}-{name}"
        path = download(src, dest, max_bytes=int(ctx.params.max_episode_mb * 1e6), timeout_s=ctx.params.timeout_s,
                        settings=ctx.settings)
        ref = ctx.store.put_file(path, step="corpus.episode", params={"url": src.url, "id": src.id}, name=name)
        if path == dest:
            dest.unlink(missing_ok=True)  # the store holds it now
        return {"sha": ref.sha256, "bytes": ref.size, "name": name}

    res = run_step(ctx, state, "fetch", [], ident, compute)
    state.raw_sha, state.raw_bytes = res["sha"], res["bytes"]
    return state


# ------------------------------------------------------------------------------------------------ 2. standardize
@guarded("standardize")
def standardize(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Decode any codec to 24 kHz mono, reject truncated/undecodable files, normalize loudness."""
    assert state.raw_sha
    params = {"sr": SR, "target_lufs": ctx.params.target_lufs}

    def compute() -> dict:
        name = state.results["fetch"].get("name", "episode")
        path = ctx.work / "raw" / f"{state.raw_sha}-{name}"
        if not path.exists():
            ctx.store.get_file(state.raw_sha, path)
        try:
            wav = load_audio_checked(path, SR)
        except InputError as e:
            raise InputError(str(e).replace(str(path), f"episode {state.source.url}")) from None
        finally:
            path.unlink(missing_ok=True)
        seconds = wav.size / SR
        if seconds < 1.0:
            raise InputError(f"episode {state.source.url}: too short ({seconds:.2f} s of audio)")
        clipped = clipped_fraction(wav)
        lufs_in = loudness_lufs(wav, SR)
        norm, gain = normalize_loudness(wav, SR, ctx.params.target_lufs)
        sha = ctx.put_audio(norm, step="corpus.standardize", inputs=[state.raw_sha], params=params)
        return {"sha": sha, "seconds": seconds, "gain": gain, "lufs_in": lufs_in, "clipped_in": clipped}

    res = run_step(ctx, state, "standardize", [state.raw_sha], params, compute)
    state.seconds = res["seconds"]
    return state


# ------------------------------------------------------------------------------------------------ 3. separate
@guarded("separate")
def separate(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """The speech of the episode: Demucs' vocals stem or DeepFilterNet3's enhanced speech (`separator`), or the
    standardized audio itself with `separate=False`."""
    std = state.results["standardize"]
    if not ctx.params.separate:
        state.results["separate"] = {"sha": std["sha"], "separated": False}
        state.cache["separate"] = "skip"
        return state
    enhancer = ctx.engines.separator_name == "deepfilternet"
    if enhancer:
        params: dict = {"model": "deepfilternet3", "atten_lim_db": Enhancer.ATTEN_LIM_DB}
    else:
        params = {"model": ctx.params.demucs_model}
        if ctx.engines.separation_batch > 1:  # batched pieces differ slightly at their joins; batch 1 keeps old keys
            params["batch"] = ctx.engines.separation_batch

    def compute() -> dict:
        wav = ctx.audio(std["sha"], SR)
        vocals = ctx.engines.separator.vocals(wav, SR, progress=ctx.progress)
        sha = ctx.put_audio(vocals, step="corpus.separate", inputs=[std["sha"]], params=params)
        # an enhancer's speech is what the corpus is cut from; the speaker decisions hear the mix (see diarize)
        return {"sha": sha, "separated": True, **({"speaker_sha": std["sha"]} if enhancer else {})}

    run_step(ctx, state, "separate", [std["sha"]], params, compute)
    return state


# ------------------------------------------------------------------------------------------------ 4. diarize
def separated_speech(speech: list[list[float]], separated: np.ndarray, mix: np.ndarray, sr: int,
                     floor_db: float) -> tuple[list[list[float]], list[list[float]]]:
    """(the VAD's regions that are speech, those that are not): a region is not speech when its separated audio
    is more than `floor_db` below the mix's (energy over the region). The separator keeps speech at about the
    mix's level (within 0-8 dB under a bed or an outro) and takes 20-30 dB off a music sting, a drum hit or an
    intro; silero still hears speech in some of that residue, and such a region, embedded by the speaker models,
    is a far-off cluster that wins the speaker count and merges the real voices into one."""
    keep, removed = [], []
    for a, b in speech:
        x = separated[int(a * sr) : int(b * sr)].astype(np.float64)
        y = mix[int(a * sr) : int(b * sr)].astype(np.float64)
        if x.size == 0 or y.size == 0:
            keep.append([a, b])
            continue
        drop_db = 10 * np.log10((np.mean(y**2) + 1e-12) / (np.mean(x**2) + 1e-12))
        (removed if drop_db > floor_db else keep).append([a, b])
    return keep, removed


def _split_even(start: float, end: float, max_len: float) -> list[tuple[float, float]]:
    n = max(1, int(np.ceil((end - start) / max_len)))
    edges = np.linspace(start, end, n + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@guarded("diarize")
def diarize(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Speaker turns, overlapped speech, and which turns are the target's — decided against the episode's own
    speakers, not a fixed cosine threshold (how far two voices embed apart depends on the pair). The speech is the
    VAD's on the separated audio, less (with separation) the regions the separator took more than
    `separated_floor_db` off: music it removed, whose residue the VAD still heard (`separated_speech`).

    With a pyannote pipeline: its turns and overlap; each pyannote speaker is embedded as a whole (its turns'
    audio, up to 60 s) and the one nearest the enrollment centroid is the target (`speakers.target_label`: no fixed
    threshold); the speakers' embeddings are kept as the episode's centroids, so the filter's `min_speaker_margin`
    judges every utterance against the episode's other speakers, as on the CPU path.
    Without one (the CPU path, `voicepipe.corpus.speakers`): pyannote's segmentation model (`segmentation_model`)
    finds overlapped speech, cut out of the target's speech, and changes of speaker without a pause, where the
    speech is cut; 1.5 s windows every 0.25 s over those one-voice stretches are embedded (the speaker model's and,
    with `fuse_resemblyzer`, resemblyzer's cosines averaged) and clustered into the episode's speakers (k-means
    seeded with the enrollment, count by silhouette; with `unit_evidence`, the count is chosen again on the units
    of at least 1 s embedded whole); the cluster nearest the enrollment is the target, and each
    window is the target's only when it is nearer the target than every other speaker by `speaker_margin` (a
    fraction of the distance between the two) and is not an outlier among the target's windows (`overlap_tails`: a
    stretch shorter than one window next to overlapped speech is judged by the margin alone, and guarded). The
    target gives up `change_guard_s` on its side of each change of speaker without a pause. With separation
    (`overlap_enhanced`), overlapped speech is looked for on the enhanced audio too. The speakers' centroids are kept in
    the speaker model's own space, where the filter judges whole utterances; so are the units' embeddings
    (`unit_embs`, with `feed_unit_margin`), which `feed_check` judges against the whole feed's voices.
    """
    from voicepipe.corpus import speakers as spk_mod

    p = ctx.params
    audio_sha, speaker_sha = state.audio_sha, state.speaker_audio_sha
    params = {"model": p.diarization_model or "embedding-clusters", "rule": "relative",
              "enroll": ctx.enroll_key, "min_silence_s": p.min_silence_s, "margin": p.speaker_margin,
              "win": spk_mod.WIN_S, "hop": spk_mod.HOP_S, "guard": p.change_guard_s}
    if not p.diarization_model and p.segmentation_model:
        params.update(segmentation=p.segmentation_model, overlap_pad=p.overlap_pad_s)
        if p.overlap_count != 1.5:  # (1.5: pyannote's rounding, the results stored before it was a setting)
            params.update(overlap_count=p.overlap_count)
    heard_apart = speaker_sha != audio_sha  # separated: the mix judges speakers, the enhanced audio is cut
    if not p.diarization_model and p.segmentation_model and p.overlap_enhanced and heard_apart:
        params.update(overlap_enhanced=True)
    if not p.diarization_model and p.segmentation_model and p.overlap_tails:
        params.update(overlap_tails=True)
    if not p.diarization_model and p.fuse_resemblyzer:
        params.update(fuse="resemblyzer")
    if not p.diarization_model and p.unit_evidence:
        params.update(units=spk_mod.Units.MIN_S)
    feed_units = not p.diarization_model and p.feed_voice_check and p.feed_unit_margin is not None
    if feed_units:  # the units' embeddings, for the feed check between diarize and segment (`feed_check`)
        params.update(unit_embs=True)
    mix_sha = state.results["standardize"]["sha"]
    floor_db = p.separated_floor_db if audio_sha != mix_sha else None
    if floor_db is not None:
        params.update(separated_floor_db=floor_db)

    def compute() -> dict:
        speech = ctx.engines.vad.speech(ctx.audio(audio_sha, SR16), min_silence_s=p.min_silence_s)
        removed: list[list[float]] = []
        if floor_db is not None:  # the VAD hears what the separator left of a music sting: not speech
            speech, removed = separated_speech(speech, ctx.audio(audio_sha, SR16), ctx.audio(mix_sha, SR16), SR16,
                                               floor_db)
        wav = ctx.audio(speaker_sha, SR16)  # speaker turns, overlap, changes and embeddings: see speaker_audio_sha
        centroid = ctx.centroid
        spk = ctx.engines.speaker

        if p.diarization_model:
            raw_turns, overlap = ctx.engines.diarizer(wav)
            embs: dict[str, np.ndarray] = {}
            talk: dict[str, float] = {}
            for label in sorted({t[2] for t in raw_turns}):
                pieces, total = [], 0.0
                for a, b, lab in raw_turns:
                    if lab == label:
                        talk[label] = talk.get(label, 0.0) + b - a
                        if total < 60.0:
                            pieces.append(wav[int(a * SR16) : int(b * SR16)])
                            total += b - a
                embs[label] = spk_mod.unit(spk.embed(np.concatenate(pieces)))
            target, labels = spk_mod.target_label(embs, centroid)
            turns = [{"start": a, "end": b, "speaker": lab, "sim": labels[lab], "target": lab == target,
                      "reason": "" if lab == target else f"other speaker ({lab}, cosine to enrollment "
                      f"{labels[lab]:.2f}; target {target} at {labels[target]:.2f})"} for a, b, lab in raw_turns]
            speakers = [{"label": lab, "talk_s": round(talk.get(lab, 0.0), 2), "enroll_sim": round(v, 4),
                         "target": lab == target} for lab, v in labels.items()]
            return {"backend": "pyannote", "speech": speech, "removed": removed, "turns": turns,
                    "overlap": [list(o) for o in overlap],
                    "labels": labels, "target_label": target, "speakers": speakers,
                    "centroids": {lab: [round(float(x), 6) for x in e] for lab, e in embs.items()}}

        overlap, changes = (ctx.engines.segmentation(wav, min_count=p.overlap_count) if p.segmentation_model
                            else ([], []))
        if params.get("overlap_enhanced"):  # a music bed on the mix can hide a "yeah" the enhanced audio shows
            more, _ = ctx.engines.segmentation(ctx.audio(audio_sha, SR16), min_count=p.overlap_count)
            overlap = intervals.union([tuple(o) for o in overlap] + [tuple(o) for o in more])
        regions = spk_mod.units([tuple(x) for x in speech], overlap, changes)
        wins = spk_mod.windows(regions)
        tails = spk_mod.overlap_tails(regions, overlap) if params.get("overlap_tails") else []
        embs, own = ctx.engines.window_embeddings([wav[int(s * SR16) : int(e * SR16)] for s, e in wins])
        if not wins:
            return {"backend": "embedding-clusters", "speech": speech, "removed": removed, "turns": [],
                    "changes": changes,
                    "segmentation": p.segmentation_model or None, "overlap": [list(o) for o in overlap],
                    "labels": {}, "target_label": None, "speakers": [], "centroids": {}}
        units, spans, uown = None, [], np.zeros((0, 1), dtype=np.float32)
        if (p.unit_evidence or feed_units) and (spans := spk_mod.Units.spans(regions)):  # units embedded whole
            uembs, uown = ctx.engines.window_embeddings([wav[int(a * SR16) : int(b * SR16)] for a, b in spans])
            if p.unit_evidence:
                units = spk_mod.Units.of(regions, wins, uembs)
        sp = spk_mod.EpisodeSpeakers.find(embs, ctx.window_centroid, units=units)
        keep, score, reasons = spk_mod.decide(embs, sp, margin=p.speaker_margin)
        if sp.target is not None:
            keep, reasons, tails = spk_mod.spare_tails(wins, keep, score, reasons, tails, p.speaker_margin)
        verdicts = ["target" if k else r for k, r in zip(keep, reasons, strict=True)]
        turns = []
        runs = spk_mod.timeline(wins, verdicts, regions)
        runs = spk_mod.cut_overlap(spk_mod.guard_changes(runs, p.change_guard_s), overlap, p.overlap_pad_s)
        runs = spk_mod.guard_tails(runs, tails, p.change_guard_s)
        for a, b, v in runs:
            is_t = v == "target"
            turns.append({"start": round(a, 3), "end": round(b, 3), "speaker": "target" if is_t else "other",
                          "target": is_t, "reason": "" if is_t else v})
        talk = {i: 0.0 for i in range(len(sp.centroids))}
        for a, b, lab in spk_mod.timeline(wins, [str(int(x)) for x in sp.labels], regions):
            talk[int(lab)] += b - a
        # the speakers in the speaker model's own space (the filter judges whole utterances there)
        cents = spk_mod.unit(np.stack([own[sp.labels == i].mean(axis=0) for i in range(len(sp.centroids))]))
        speakers = [{"label": f"S{i}", "talk_s": round(talk[i], 2), "enroll_sim": round(float(c @ centroid), 4),
                     "target": i == sp.target} for i, c in enumerate(cents)]
        target = f"S{sp.target}" if sp.target is not None else None
        return {"backend": "embedding-clusters", "speech": speech, "removed": removed, "turns": turns,
                "changes": changes,
                "segmentation": p.segmentation_model or None, "fused": "resemblyzer" if ctx.engines.fused else None,
                "overlap": [list(o) for o in overlap], "labels": {x["label"]: x["enroll_sim"] for x in speakers},
                "target_label": target,
                "speakers": speakers,
                "centroids": {f"S{i}": [round(float(x), 6) for x in c] for i, c in enumerate(cents)},
                **({"units": [[round(a, 3), round(b, 3)] for a, b in spans],
                    "unit_embs": [[round(float(x), 5) for x in e] for e in spk_mod.unit(uown)] if spans else []}
                   if feed_units else {})}

    run_step(ctx, state, "diarize", [audio_sha] + ([speaker_sha] if speaker_sha != audio_sha else []), params,
             compute)
    return state


# ------------------------------------------------------------------------------------------------ 4b. feed check
def overlap_fraction(dia: dict) -> float | None:
    """The fraction of an episode's speech heard as overlapped; None where nothing looked (no segmentation model)."""
    if dia.get("backend") != "pyannote" and not dia.get("segmentation"):
        return None
    speech = intervals.union([tuple(x) for x in dia.get("speech", [])])
    total = sum(b - a for a, b in speech)
    heard = intervals.intersect(speech, intervals.union([tuple(x) for x in dia.get("overlap", [])]))
    return sum(b - a for a, b in heard) / total if total > 0 else None


def feed_entry(dia: dict) -> dict:
    """What the feed check knows of an episode from its diarize result (`speakers.judge_feed`'s entry): its target
    speaker's centroid, its other speakers (centroid, talk seconds) and its overlapped share."""
    cents, target = dia.get("centroids") or {}, dia.get("target_label")
    talk = {s["label"]: s["talk_s"] for s in dia.get("speakers", [])}
    return {"voice": np.asarray(cents.get(target) or [], dtype=np.float64), "overlap": overlap_fraction(dia),
            "others": {lab: (np.asarray(c), talk.get(lab, 0.0)) for lab, c in cents.items() if lab != target}}


def feed_check(ctx: StepContext, states: list[EpisodeState]) -> list[EpisodeState]:
    """The barrier between diarize and segment: once every episode is diarized, each episode's units (stretches
    of one voice, embedded whole) are judged against the voices of the whole feed (`speakers.feed_voices`: the
    target's voice over the episodes nearest the enrollment, and the other voices that recur across episodes),
    and those nearer another voice than the target's by `feed_unit_margin` are cut before segment cuts the
    target's speech into utterances (`speakers.feed_units`). Units of `feed_unit_min_s` to 2 s (a co-host's short
    reply the episode's clusters gave the target), which diarize does not embed, are embedded here. Per episode a
    memoized step keyed by every episode's diarize result. Episodes without units (the pyannote path, studio takes,
    rejected episodes) pass.
    """
    from voicepipe.corpus import speakers as spk_mod

    p = ctx.params
    if not p.feed_voice_check or p.feed_unit_margin is None:
        return states
    # (a studio take's diarize has no units: one voice per take, checked against the enrollment)
    judged = [st for st in states if st.ok and "unit_embs" in (st.results.get("diarize") or {})]
    if len(judged) < spk_mod.FEED_MIN_EPISODES:  # (fewer: `feed_outliers` judges none)
        return states
    _, _, _, feed = spk_mod.feed_voices({st.source.id: feed_entry(st.results["diarize"]) for st in judged},
                                        ctx.centroid, quiet_overlap=p.feed_rescue_max_overlap)
    every = sorted(st.result_shas["diarize"] for st in judged)
    # every episode's diarize result is an input; as one hash in the key (a feed of hundreds of episodes would
    # otherwise list every sha in every episode's sidecar), the episode's own as its lineage
    params = {"margin": p.feed_unit_margin, "enroll": ctx.enroll_key, "feed": _hash(every),
              "quiet_overlap": p.feed_rescue_max_overlap}
    short_s = p.feed_unit_min_s if p.feed_unit_min_s < spk_mod.Units.MIN_S else None
    if short_s is not None:
        params.update(short_units=short_s)
    if p.feed_split_margin is not None:
        params.update(split_margin=p.feed_split_margin)
    if p.feed_unit_turns:
        params.update(unit_turns=1)
    for st in judged:
        dia = st.results["diarize"]

        def compute(dia: dict = dia, episode: str = st.source.id, sha: str = st.speaker_audio_sha) -> dict:
            heard: list[np.ndarray] = []

            def embed(spans: list[tuple[float, float]]) -> np.ndarray:
                """The speaker model's embeddings of `spans` of the heard audio (read once, only if needed)."""
                if not heard:
                    heard.append(ctx.audio(sha, SR16))
                return ctx.engines.speaker.embed_many([heard[0][int(a * SR16) : int(b * SR16)] for a, b in spans])

            # an episode's cluster split off the target's, given back (`speakers.feed_target_clusters`)
            found = (spk_mod.feed_target_clusters(dia, feed, episode, margin=p.feed_split_margin)
                     if feed is not None and p.feed_split_margin is not None else {})
            back = [x for spans in found.values() for x in spans]
            # only the units that hold some of the target's turns (the others are cut already)
            turns = intervals.union([(t["start"], t["end"]) for t in dia["turns"] if t["target"]]
                                    + [(a, b) for a, b, _ in back])

            def holds_target(a: float, b: float) -> bool:
                return intervals.seconds(intervals.intersect(turns, [(a, b)])) > 0

            mine = [i for i, (a, b) in enumerate(dia["units"]) if holds_target(a, b)]
            units = [tuple(dia["units"][i]) for i in mine]
            embs = np.asarray([dia["unit_embs"][i] for i in mine], dtype=np.float64)
            if short_s is not None:  # the shorter stretches of one voice too, embedded here (diarize keeps >= 2 s)
                regions = spk_mod.units([tuple(x) for x in dia["speech"]], [tuple(x) for x in dia["overlap"]],
                                        dia.get("changes") or [])
                short = [(a, b) for a, b in regions if short_s <= b - a < spk_mod.Units.MIN_S and holds_target(a, b)]
                if short:
                    semb = embed(short)
                    units += short
                    embs = np.concatenate([embs.reshape(-1, semb.shape[1]), semb.astype(np.float64)])
            if p.feed_unit_turns and units:  # a unit that runs on into another speaker's turn: its target's part
                units, embs = _target_parts(units, embs, turns, p.feed_unit_min_s, embed)
            cut = (spk_mod.feed_units(units, embs, feed, episode, margin=p.feed_unit_margin)
                   if feed is not None and units else [])
            return {"cut": [list(c) for c in cut], "voices": len(feed.others) if feed is not None else 0,
                    "episodes": len(every), **({"target_after_all": [list(x) for x in back],
                                                "target_labels_after_all": sorted(found)} if found else {})}

        run_step(ctx, st, FEED_STEP, [st.result_shas["diarize"]], params, compute)
    return states


TURN_TOLERANCE_S = 0.5  # `_target_parts`: less of a unit than this outside the target's turns is its edges


def _target_parts(units: list[tuple[float, float]], embs: np.ndarray, turns: list[tuple[float, float]],
                  min_s: float, embed: Callable[[list[tuple[float, float]]], np.ndarray],
                  ) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The feed check's units as the target's turns hold them. The segmentation model hears no change where one
    voice follows another without a pause, so a unit may run from the end of the target's turn through a
    co-host's whole reply, while diarize's windows give the two to different speakers; judged whole, its voice is
    the co-host's and the target's part of it is cut. A unit more than `TURN_TOLERANCE_S` outside the target's
    `turns` is judged by its parts inside them instead: each part of `min_s` or more embedded alone, a shorter one
    by the whole unit's voice (too short to say otherwise); `embed` embeds spans of the episode's heard audio.
    Returns (units, embeddings) to judge."""
    out: list[tuple[float, float]] = []
    rows: list[np.ndarray] = []
    alone: list[tuple[float, float]] = []
    for (a, b), e in zip(units, embs, strict=True):
        parts = intervals.intersect(turns, [(a, b)])
        if (b - a) - intervals.seconds(parts) < TURN_TOLERANCE_S:
            out.append((a, b))
            rows.append(e)
            continue
        for x, y in parts:
            if y - x >= min_s:
                alone.append((x, y))
            else:
                out.append((x, y))
                rows.append(e)
    if alone:
        aemb = embed(alone)
        out += alone
        rows += list(np.asarray(aemb, dtype=np.float64))
    return out, np.asarray(rows, dtype=np.float64).reshape(len(out), -1)


# ------------------------------------------------------------------------------------------------ 5. segment
@guarded("segment")
def segment(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Cut the target's speech into utterances of at most `max_duration_s`, at pauses, with padding.

    Target speech = VAD speech inside target turns minus overlapped speech. Consecutive target regions join
    while the gap is a pause (< 1.5 s) with no other speaker in it and the result stays within the limit; a
    single region longer than the limit is split evenly. Padding never reaches into other speech. Every other
    second of speech is recorded as a rejected span (other speaker, overlap, no speaker turn).
    """
    p = ctx.params
    dia_sha = state.result_shas["diarize"]
    params = {"max_s": p.filters.max_duration_s, "pad_s": p.pad_s}
    feed = state.results.get(FEED_STEP)  # the feed check's units to cut (`feed_check`), when it ran
    feed_cut = [[a, b] for a, b, _ in feed["cut"]] if feed else []
    if feed_cut:  # only the cut itself is a key: a feed that grows by an episode leaves the others' segments cached
        params.update(feed_cut=feed_cut, feed_guard=p.change_guard_s)
    back = [[a, b] for a, b, _ in (feed or {}).get("target_after_all", [])]
    if back:
        params.update(target_after_all=back)

    def compute() -> dict:
        dia = state.results["diarize"]
        speech = [tuple(x) for x in dia["speech"]]
        overlap = intervals.union([tuple(x) for x in dia["overlap"]])
        tgt_turns = intervals.union([(t["start"], t["end"]) for t in dia["turns"] if t["target"]]
                                    + [tuple(x) for x in back])  # (the feed check's: the target's after all)
        other_turns = [t for t in dia["turns"] if not t["target"]]
        target = intervals.subtract(intervals.intersect(speech, tgt_turns), overlap)
        rejects = []
        for a, b in feed_cut:  # the unit, and the change guard on each side (its edges: a change or a pause)
            cut = intervals.intersect(target, [(a - p.change_guard_s, b + p.change_guard_s)])
            target = intervals.subtract(target, cut)
            rejects += [{"start": s, "end": e, "step": FEED_STEP, "reason": FEED_CUT_REASON} for s, e in cut]
        for t in other_turns:
            for s, e in intervals.subtract(intervals.intersect(speech, [(t["start"], t["end"])]), overlap + tgt_turns):
                why = t.get("reason") or f"other speaker (sim {t['sim']:.2f})"
                rejects.append({"start": s, "end": e, "step": "diarize", "reason": why})
        for s, e in intervals.intersect(speech, overlap):
            rejects.append({"start": s, "end": e, "step": "diarize", "reason": "overlapped speech"})
        for s, e in dia.get("removed", []):
            rejects.append({"start": s, "end": e, "step": "diarize",
                            "reason": "not speech (the separator removed it: music, noise; the VAD heard the rest)"})
        covered = intervals.union(tgt_turns + [(t["start"], t["end"]) for t in other_turns] + overlap)
        for s, e in intervals.subtract(speech, covered):
            rejects.append({"start": s, "end": e, "step": "diarize", "reason": "no speaker turn"})
        non_target = intervals.union(intervals.subtract(speech, target))
        # join target regions at pauses
        groups: list[list[float]] = []
        for s, e in target:
            if groups:
                gs, ge = groups[-1]
                blocked = intervals.seconds(intervals.intersect(non_target, [(ge, s)])) > 0
                if not blocked and s - ge < 1.5 and e - gs <= p.filters.max_duration_s:
                    groups[-1][1] = e
                    continue
            groups.append([s, e])
        pieces: list[intervals.Interval] = []
        for s, e in groups:
            pieces.extend(_split_even(s, e, p.filters.max_duration_s) if e - s > p.filters.max_duration_s
                          else [(s, e)])
        segs = []
        bound = state.seconds
        for i, (s, e) in enumerate(pieces):
            lo = max(0.0, s - p.pad_s, pieces[i - 1][1] if i else 0.0)
            hi = min(bound, e + p.pad_s, pieces[i + 1][0] if i + 1 < len(pieces) else bound)
            for ns, ne in non_target:  # never pad into other speech
                if ne <= s:
                    lo = max(lo, ne)
                if ns >= e:
                    hi = min(hi, ns)
            segs.append({"start": round(lo, 3), "end": round(hi, 3), "speech_s": round(e - s, 3)})
        return {"segments": segs, "rejects": rejects, "speech_s": intervals.seconds(speech),
                "target_s": intervals.seconds(target)}

    run_step(ctx, state, "segment", [dia_sha], params, compute)
    return state


# ------------------------------------------------------------------------------------------------ 6. transcribe
def normalize_text(text: str) -> str:
    """Collapse whitespace, drop stray leading punctuation, keep casing and punctuation (the TTS reads them)."""
    text = " ".join(text.replace("\u00a0", " ").split())
    return text.lstrip("-–—,;: ").strip()


@guarded("transcribe")
def transcribe(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """ASR on every segment: normalized text and a confidence (mean word/token probability)."""
    p = ctx.params
    seg_sha = state.result_shas["segment"]
    params = {"backend": p.asr_backend, "model": p.asr_model if p.asr_backend == "whisper" else "en-us",
              "language": p.language}

    def compute() -> dict:
        from tqdm.auto import tqdm

        wav = ctx.audio(state.audio_sha, SR16)
        segs = state.results["segment"]["segments"]
        out = []
        batch = p.resolved_asr_batch(ctx.engines.device)
        for i in tqdm(range(0, len(segs), batch), desc=f"asr {state.source.id}", disable=not ctx.progress,
                      leave=False):
            chunk = [wav[int(s["start"] * SR16) : int(s["end"] * SR16)] for s in segs[i : i + batch]]
            for text, conf in ctx.engines.asr.transcribe(chunk, p.language):
                out.append({"text": normalize_text(text), "asr_conf": round(float(conf), 4)})
        return {"texts": out}

    run_step(ctx, state, "transcribe", [seg_sha], params, compute)
    return state


# ------------------------------------------------------------------------------------------------ 7. filter
def _non_speech(speech: list[list[float]], total: float) -> list[intervals.Interval]:
    return intervals.subtract([(0.0, total)], [tuple(x) for x in speech])


def _local_noise(wav: np.ndarray, sr: int, noise_iv: list[intervals.Interval], start: float, end: float,
                 context_s: float) -> np.ndarray | None:
    """The quietest quarter (25 ms frames) of the non-speech audio within `context_s` of [start, end) (None if under
    0.25 s): the background local to a segment, so an intro, an ad break or a loud music passage elsewhere in the
    episode, or right next to the segment, does not condemn it."""
    near = intervals.intersect(noise_iv, [(max(0.0, start - context_s), end + context_s)])
    if intervals.seconds(near) < 0.25:
        return None
    x = np.concatenate([wav[int(s * sr) : int(e * sr)] for s, e in near])
    n = int(0.025 * sr)
    frames = x[: len(x) // n * n].reshape(-1, n)
    if len(frames) < 4:
        return x
    power = (frames.astype(np.float64) ** 2).mean(axis=1)
    return frames[power <= np.quantile(power, 0.25)].reshape(-1)  # the bed, not a loud intro or outro next to it


def _speaker_margin(emb: np.ndarray, dia: dict, also_target: list[str] | None = None) -> float | None:
    """The segment's margin to the episode's target speaker: (cos to target - max cos to another speaker) / the
    distance between those two speakers; None when the episode's speakers are unknown (pyannote path).
    `also_target`: speakers the feed check found to be the target's after all (not "another speaker")."""
    cents = {k: v for k, v in (dia.get("centroids") or {}).items() if k not in (also_target or [])}
    target = dia.get("target_label")
    if target not in cents or len(cents) < 2:
        return None if target not in cents else 1.0
    t = np.asarray(cents[target], dtype=np.float32)
    best, other = -np.inf, None
    for lab, c in cents.items():
        if lab != target:
            v = float(emb @ np.asarray(c, dtype=np.float32))
            if v > best:
                best, other = v, np.asarray(c, dtype=np.float32)
    assert other is not None
    return float((float(emb @ t) - best) / max(1.0 - float(other @ t), 1e-3))


@guarded("filter")
def quality_filter(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Measure each segment and keep it only if it passes every gate in `params.filters`.

    SNR is local (background within `snr_context_s`). DNSMOS (P.835) is scored last, only on segments every other
    gate kept (it is the costly one; it ranks the reference clips and gates when `min_dnsmos` is set). The whole
    segment's speaker embedding must still be nearer the episode's target speaker than any other
    (`min_speaker_margin`); an absolute cosine floor (`min_speaker_sim`) is optional.
    """
    f = ctx.params.filters
    inputs = [state.result_shas["segment"], state.result_shas["transcribe"]]
    # seg_embs: kept segments carry their embeddings (the feed-level check in assemble judges them)
    params = {"filters": f.model_dump(), "enroll": ctx.enroll_key, "seg_embs": 1}
    also_target = (state.results.get(FEED_STEP) or {}).get("target_labels_after_all") or []
    if also_target:
        params.update(also_target=also_target)

    def compute() -> dict:
        wav = ctx.audio(state.audio_sha, SR)
        wav16 = ctx.audio(state.audio_sha, SR16)
        orig = ctx.audio(state.results["standardize"]["sha"], SR) / state.results["standardize"]["gain"]
        dia = state.results["diarize"]
        noise_iv = _non_speech(dia["speech"], state.seconds)
        spk, centroid = ctx.engines.speaker, ctx.centroid
        segs = state.results["segment"]["segments"]
        spans = [(int(seg["start"] * SR16), int(seg["end"] * SR16)) for seg in segs]
        embs = spk.embed_many([wav16[a:b] for a, b in spans])  # the kept audio's: the corpus centroid
        heard_apart = state.speaker_audio_sha != state.audio_sha
        if heard_apart:  # the margin is judged where diarize judged (the mix)
            heard = ctx.audio(state.speaker_audio_sha, SR16)
            margin_embs = spk.embed_many([heard[a:b] for a, b in spans])
        else:
            margin_embs = embs
        mos_ok = f.dnsmos and _mos_available()
        # the episode's target speaker as a whole (diarize's cluster or pyannote speaker): far from the enrollment,
        # the episode gave its nearest voice (`min_target_speaker_sim`)
        t_sim = max((x["enroll_sim"] for x in dia.get("speakers", []) if x.get("target")), default=None)
        absent = (f.min_target_speaker_sim is not None and t_sim is not None and t_sim < f.min_target_speaker_sim)
        rows = []
        kept_sum = np.zeros(embs.shape[1] if len(segs) else 0, dtype=np.float64)
        for seg, tr, emb, m_emb in zip(segs, state.results["transcribe"]["texts"], embs, margin_embs, strict=True):
            s, e = seg["start"], seg["end"]
            clip = wav[int(s * SR) : int(e * SR)]
            dur = e - s
            text = tr["text"]
            margin = _speaker_margin(m_emb, dia, also_target)
            noise = _local_noise(wav, SR, noise_iv, s, e, f.snr_context_s)
            m = {
                "start": s, "end": e, "duration": round(dur, 3), "text": text, "asr_conf": tr["asr_conf"],
                "clipped": round(clipped_fraction(orig[int(s * SR) : int(e * SR)]), 5),
                "lufs": round(loudness_lufs(clip, SR), 2),
                "snr_db": round(estimate_snr_db(clip, noise, SR), 2),
                "speaker_sim": round(spk.similarity(emb, centroid), 4),
                "speaker_margin": None if margin is None else round(margin, 4),
                "sec_per_char": round(dur / max(1, len(text)), 4) if text else None,
                "dnsmos": None,
            }
            reasons = []
            if not f.min_duration_s <= dur <= f.max_duration_s:
                reasons.append(f"duration {dur:.2f} s outside {f.min_duration_s:g}-{f.max_duration_s:g} s")
            if margin is not None and margin < f.min_speaker_margin:
                reasons.append(f"speaker_margin {margin:.2f} < {f.min_speaker_margin:g} (nearer another speaker)")
            if f.min_speaker_sim is not None and m["speaker_sim"] < f.min_speaker_sim:
                reasons.append(f"speaker_sim {m['speaker_sim']:.2f} < {f.min_speaker_sim:.2f}")
            if absent:
                reasons.append(f"{FAR_TARGET_REASON} (cosine {t_sim:.2f} < "
                               f"min_target_speaker_sim {f.min_target_speaker_sim:g}: the target absent?)")
            if m["clipped"] > f.max_clipped_fraction:
                reasons.append(f"clipping {m['clipped']:.4f} > {f.max_clipped_fraction:g}")
            if m["lufs"] < f.min_loudness_lufs:
                reasons.append(f"loudness {m['lufs']:.1f} LUFS < {f.min_loudness_lufs:g}")
            if m["snr_db"] < f.min_snr_db:
                reasons.append(f"snr {m['snr_db']:.1f} dB < {f.min_snr_db:g}")
            if mos_ok and dur >= 0.5 and not reasons:  # the costly check last: a dropped segment is not scored
                m["dnsmos"] = _dnsmos(wav16[int(s * SR16) : int(e * SR16)])
            if f.min_dnsmos is not None and m["dnsmos"] is not None and m["dnsmos"]["ovrl"] < f.min_dnsmos:
                reasons.append(f"dnsmos {m['dnsmos']['ovrl']:.2f} < {f.min_dnsmos:g}")
            if not text:
                reasons.append("asr: no words recognized")
            else:
                if m["asr_conf"] < f.min_asr_confidence:
                    reasons.append(f"asr_confidence {m['asr_conf']:.2f} < {f.min_asr_confidence:g}")
                if not f.min_sec_per_char <= m["sec_per_char"] <= f.max_sec_per_char:
                    reasons.append(f"speech_rate {m['sec_per_char']:.3f} s/char outside "
                                   f"{f.min_sec_per_char:g}-{f.max_sec_per_char:g}")
            m["keep"] = not reasons
            m["reasons"] = reasons
            if m["keep"]:
                kept_sum += emb
                # the kept audio's embedding (the corpus centroid) and, when they differ, the one heard where
                # diarize judged (the mix: the episodes' speakers live there); fp32 values, 5 decimals
                m["emb"] = [round(float(x), 5) for x in emb]
                if heard_apart:
                    m["emb_heard"] = [round(float(x), 5) for x in m_emb]
            rows.append(m)
        # the sum of the kept segments' unit embeddings (fp32 values): the corpus centroid is their normalized total
        return {"segments": rows, "kept_emb_sum": [float(x) for x in kept_sum.astype(np.float32)]}

    run_step(ctx, state, "filter", inputs, params, compute)
    return state


_MOS_LOCK = threading.Lock()


def _dnsmos(wav16k: np.ndarray) -> dict[str, float] | None:
    """DNSMOS of one 16 kHz clip, rounded (`voicepipe.evaluate.metrics.predict_mos`; one call at a time: speechmos
    keeps one ONNX session in a module global). A module-level helper, so the steps that call it stay picklable."""
    from voicepipe.evaluate.metrics import predict_mos

    with _MOS_LOCK:
        mos = predict_mos(wav16k, SR16)
    return None if mos is None else {k: round(v, 3) for k, v in mos.items()}


def _mos_available() -> bool:
    from voicepipe.evaluate.metrics import mos_backend

    return mos_backend() is not None


# ------------------------------------------------------------------------------------------------ 8. encode
def clip_id(state: EpisodeState, start: float) -> str:
    """Stable utterance id: episode content hash prefix + start time in ms."""
    return f"{(state.raw_sha or '')[:12]}-{int(round(start * 1000)):08d}"


@guarded("encode")
def encode(ctx: StepContext, state: EpisodeState) -> EpisodeState:
    """Cut kept segments into 24 kHz mono clips (stored; sidecar inputs = the episode) and codec-encode them."""
    p = ctx.params
    inputs = [state.result_shas["filter"], state.audio_sha]
    params = {"codec": p.codec_model}

    def compute() -> dict:
        from tqdm.auto import tqdm

        wav = ctx.audio(state.audio_sha, SR)
        kept = [s for s in state.results["filter"]["segments"] if s["keep"]]
        clips = []
        for s in kept:
            cid = clip_id(state, s["start"])
            clip = wav[int(s["start"] * SR) : int(s["end"] * SR)]
            path = save_wav(ctx.work / "tmp" / f"{cid}.wav", clip, SR)
            sha = ctx.store.put_file(path, step="corpus.clip", inputs=[state.raw_sha, state.audio_sha],
                                     params={"episode": state.source.id, "start": s["start"], "end": s["end"]},
                                     name=f"{cid}.wav").sha256
            path.unlink(missing_ok=True)
            clips.append({"id": cid, "sha": sha, "start": s["start"], "end": s["end"]})
        batch = 8
        for i in tqdm(range(0, len(clips), batch), desc=f"codec {state.source.id}", disable=not ctx.progress,
                      leave=False):
            chunk = clips[i : i + batch]
            wavs = [wav[int(c["start"] * SR) : int(c["end"] * SR)] for c in chunk]
            # the clip files were written as 16-bit PCM: encode exactly what the trainer will read
            wavs = [np.round(np.clip(w, -1, 1) * 32767).astype(np.float32) / 32768.0 for w in wavs]
            for c, codes in zip(chunk, ctx.engines.codec.encode(wavs), strict=True):
                c["audio_codes"] = codes
        return {"clips": clips}

    run_step(ctx, state, "encode", inputs, params, compute)
    return state


STEP_FUNCS: dict[str, Callable[[StepContext, EpisodeState], EpisodeState]] = {
    "fetch": fetch, "standardize": standardize, "separate": separate, "diarize": diarize, "segment": segment,
    "transcribe": transcribe, "filter": quality_filter, "encode": encode,
}


def run_steps(ctx: StepContext, state: EpisodeState, steps: list[str]) -> EpisodeState:
    """`steps` of one episode, in order."""
    for step in steps:
        state = STEP_FUNCS[step](ctx, state)
    return state


def process_episode(ctx: StepContext, source: EpisodeSource) -> EpisodeState:
    """All steps for one episode on its own, in order (no feed check: `build_local` runs that between the two
    halves of every episode's steps, as the flow does)."""
    return run_steps(ctx, EpisodeState(source=source), STEPS)


def episode_audio_16k(ctx: StepContext, state: EpisodeState) -> np.ndarray:
    """The (separated) episode audio at 16 kHz (for scoring and reports)."""
    return resample(ctx.audio(state.audio_sha, SR), SR, SR16)
