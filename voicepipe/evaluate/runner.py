"""Evaluate every checkpoint of a training run, pick the best by a documented rule, and promote it.

    ctx = prepare(checkpoints, corpus, config)          # inputs, held-out clips, speaker centroid, ASR
    rows = [evaluate_model(ctx, entry) for entry in ctx.entries]   # base zero-shot clone, each epoch, --reference
    result = finish(ctx, rows)                          # selection + report files (report.md, report.html)
    promote(store, result)                              # voices/<speaker> -> put_dir sha of the chosen checkpoint

`evaluate_checkpoints(...)` does all four. A checkpoint that fails to load or to synthesize becomes a row marked
failed with the reason; the others are still evaluated.
"""

from __future__ import annotations

import gc
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from voicepipe.errors import InputError, ModelError, StoreError, VoicepipeError
from voicepipe.evaluate import metrics as M
from voicepipe.evaluate.selection import Selection, SelectionRule, select_checkpoint
from voicepipe.models.prompt import corpus_language, normalize_language, read_voice_meta

SCRIPT_PATH = Path(__file__).with_name("script.txt")
_EPOCH_DIR = re.compile(r"^epoch[-_]?(\d+)$")


def load_script(path: str | Path = SCRIPT_PATH) -> list[str]:
    """The fixed evaluation sentences (one per line, '#' comments and blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


class EvalConfig(BaseModel):
    """How checkpoints are evaluated; every field has a production default."""

    script: list[str] | None = Field(None, description="Sentences to synthesize; None = the package's script.txt.")
    max_val_texts: int = Field(10, ge=0, description="Held-out validation texts synthesized in addition.")
    max_ref_clips: int = Field(20, ge=1, description="Held-out real clips averaged into the target's voice.")
    language: str | None = Field(None, description="Language of the prompts; None: each checkpoint's trained "
                                 "language (voicepipe.json), the corpus's for the base model's clone.")
    asr: str = Field("auto", description="whisper | pocketsphinx | auto (Whisper if its files are local).")
    mos: bool = Field(True, description="Score naturalness with DNSMOS (weights ship in the speechmos wheel).")
    device: str = Field("auto", description="auto (the GPU in bf16 when there is one, else the CPU), cpu, cuda.")
    batch: int = Field(16, ge=1, description="Evaluation texts the serving engine generates at once.")
    selection: Literal["strict", "plumbing"] = Field(
        "strict", description="strict: the documented rule. plumbing: TESTS/DEMOS ONLY, promotes a checkpoint that "
        "merely loaded and synthesized (tiny random models never pass validity); never for a real voice.")
    seed: int = 1234
    cap_s_per_char: float = Field(0.2, description="Token cap: seconds of audio allowed per character ...")
    cap_base_s: float = Field(2.0, description="... plus this many seconds.")
    cap_max_frames: int = 2048
    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    wer_ceiling: float = 0.20
    wer_vs_base: float = 1.5
    min_valid_fraction: float = 0.9
    require_beat_base: bool = True
    sim_margin: float | None = Field(None, ge=0, description="Floor of the promotion margin over the base's SIM; "
                                     "None = the speaker model's documented floor (selection.py).")
    margin_se: float = Field(2.0, ge=0, description="The gain must also exceed this many standard errors of the "
                             "paired per-text SIM difference (0: floor only).")
    html_samples: int = Field(4, ge=0, description="Audio players per checkpoint in report.html (base64 wav).")

    def rule(self, speaker_model: dict[str, Any] | None = None) -> SelectionRule:
        """The selection rule; the margin floor is `sim_margin`, else that of the speaker model that measured SIM
        (`SpeakerModelInfo.as_dict()`)."""
        sm = speaker_model or {}
        floor = self.sim_margin if self.sim_margin is not None else float(sm.get("promotion_margin", 0.0))
        basis = "set in the evaluation config" if self.sim_margin is not None else sm.get("margin_basis", "")
        if self.selection == "plumbing":
            return SelectionRule.plumbing()
        return SelectionRule(wer_ceiling=self.wer_ceiling, wer_vs_base=self.wer_vs_base,
                             min_valid_fraction=self.min_valid_fraction, require_beat_base=self.require_beat_base,
                             sim_margin=floor, margin_se=self.margin_se, margin_basis=basis)


@dataclass
class Entry:
    """One model to evaluate."""

    name: str
    role: str  # "base" (zero-shot clone floor) | "checkpoint" | "reference"
    path: str
    epoch: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None


@dataclass
class SampleResult:
    kind: str  # "script" | "val"
    text: str
    wav: str | None = None  # path under the output dir
    audio_s: float = 0.0
    compute_s: float = 0.0
    valid: bool = False
    reasons: list[str] = field(default_factory=list)
    sim: float | None = None
    hypothesis: str = ""
    mos: dict[str, float] | None = None


@dataclass
class Row:
    """One evaluated model: aggregate scores and its samples."""

    name: str
    role: str
    path: str
    epoch: int | None = None
    val_loss: float | None = None
    train_loss: float | None = None
    status: str = "ok"  # ok | failed
    error: str | None = None
    n_samples: int = 0
    n_valid: int = 0
    invalid_reasons: dict[str, int] = field(default_factory=dict)
    sim: float | None = None
    sim_vs_base: float | None = None
    sim_vs_reference: float | None = None
    wer: float | None = None
    cer: float | None = None
    mos_ovrl: float | None = None
    mos_p808: float | None = None
    rtf: float | None = None
    language: str | None = None  # the prompt language it was synthesized with
    synthesis: str = ""  # "engine" (the serving engine, batched) | "package" (qwen_tts generate_voice_clone)
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def valid_fraction(self) -> float:
        return self.n_valid / self.n_samples if self.n_samples else 0.0

    def scores(self) -> dict[str, Any]:
        keys = ("name", "epoch", "val_loss", "sim", "sim_vs_base", "sim_vs_reference", "wer", "cer", "mos_ovrl",
                "mos_p808", "rtf", "n_samples", "n_valid")
        return {k: getattr(self, k) for k in keys}


@dataclass
class EvalContext:
    """Everything shared by the per-model evaluations."""

    config: EvalConfig
    out_dir: Path
    checkpoints_dir: Path
    corpus_dir: Path
    speaker: str
    texts: list[tuple[str, str]]  # (kind, text)
    centroid: np.ndarray
    clone_ref: tuple[np.ndarray, int, str | None]  # real clip of the target for the base model's zero-shot clone
    entries: list[Entry]
    training: dict[str, Any]
    asr_name: str
    mos_name: str | None
    held_out: list[str] = field(default_factory=list)
    settings: Any = None
    language: str = "auto"  # the corpus's language (the base model's clone is prompted with it)
    corpus_version: str | None = None
    speaker_model: dict[str, Any] = field(default_factory=dict)  # SpeakerModelInfo.as_dict() of the SIM model
    real_sim: dict[str, float] | None = None  # held-out real clips vs the others' centroid (leave-one-out)
    speaker_model_warning: str | None = None  # e.g. the corpus was built with another speaker model


@dataclass
class EvalResult:
    rows: list[Row]
    selection: Selection
    speaker: str
    out_dir: Path
    report_md: Path | None = None
    report_html: Path | None = None
    plot_png: Path | None = None
    results_json: Path | None = None
    asr_name: str = ""
    mos_name: str | None = None
    speaker_model: dict[str, Any] = field(default_factory=dict)  # which model produced SIM (SpeakerModelInfo)
    promoted: dict[str, Any] | None = None
    stored: dict[str, dict[str, str]] = field(default_factory=dict)  # report file -> {sha256, uri} in the store
    elapsed_s: float = 0.0

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


# ---- inputs ---------------------------------------------------------------------------------------------------


def _fetch(where: str, what: str, dest: Path, store: Any = None, settings: Any = None) -> Path:
    """A local dir as is; `s3://bucket/prefix` downloaded; a store sha or ref name (e.g. corpus/alice/latest)
    fetched with `store.get_dir`."""
    if where.startswith("store:"):
        where = where[len("store:"):]
        if store is None:
            raise InputError(f"{what} store:{where}: no artifact store given")
    p = Path(where).expanduser()
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{what} {where}: not a directory")
        return p.resolve()
    if where.startswith("s3://"):
        from voicepipe.store import open_store

        backend = open_store(where if settings is None else _with_url(settings, where)).backend
        keys = [k for k in backend.list("") if not k.endswith("/")]
        if not keys:
            raise InputError(f"{what} {where}: no objects under this prefix")
        for k in keys:
            backend.get_file(k, dest / k)
        return dest
    if store is not None:
        try:
            sha = store.resolve(where)  # a ref, a sha256 or a unique prefix of one
        except StoreError:
            sha = None
        if sha is not None:
            return store.get_dir(sha, dest)
    raise InputError(f"{what} {where}: no such directory, S3 prefix, store object or ref")


def _with_url(settings: Any, url: str) -> Any:
    return settings.model_copy(update={"store_url": url})


def read_training(checkpoints_dir: Path) -> dict[str, Any]:
    """training.json, or {} when absent or unreadable (losses are then missing from the report)."""
    f = checkpoints_dir / "training.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def epoch_losses(training: dict[str, Any]) -> dict[int, dict[str, float]]:
    """Per-epoch metrics from training.json: `epochs` (or `history`/`metrics`) as a list of dicts with `epoch`, or
    a dict keyed by epoch number."""
    raw = next((training[k] for k in ("epochs", "history", "metrics", "per_epoch") if k in training), None)
    out: dict[int, dict[str, float]] = {}
    items = raw.items() if isinstance(raw, dict) else enumerate(raw or [], start=1)
    for k, v in items:
        if not isinstance(v, dict):
            continue
        try:
            ep = int(v.get("epoch", k))
        except (TypeError, ValueError):
            continue
        out[ep] = {m: float(x) for m, x in v.items() if isinstance(x, int | float) and m != "epoch"}
    return out


def find_checkpoints(checkpoints_dir: Path, training: dict[str, Any]) -> list[Entry]:
    """`epoch-NNN/` dirs in epoch order (or the dir itself if it is one model dir), with their losses."""
    losses = epoch_losses(training)
    found: list[Entry] = []
    for d in sorted(checkpoints_dir.iterdir()):
        m = _EPOCH_DIR.match(d.name)
        if d.is_dir() and m:
            ep = int(m.group(1))
            ls = losses.get(ep, {})
            found.append(Entry(d.name, "checkpoint", str(d), ep, ls.get("val_loss"),
                               ls.get("train_loss", ls.get("loss"))))
    if not found and (checkpoints_dir / "config.json").is_file():
        found.append(Entry(checkpoints_dir.name, "checkpoint", str(checkpoints_dir)))
    found.sort(key=lambda e: (e.epoch is None, e.epoch or 0, e.name))
    if not found:
        raise InputError(f"checkpoints {checkpoints_dir}: no epoch-NNN checkpoint directories (and no config.json)")
    return found


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError(f"corpus file {path}: line {i} is not JSON") from None
    return out


def _clip_path(corpus_dir: Path, p: str) -> Path:
    """A jsonl `audio` path: relative to the corpus dir, or absolute. The corpus stage writes absolute paths of
    the machine that built it; for a corpus fetched from the store they are found again under `clips/`."""
    q = Path(p)
    if not q.is_absolute():
        return corpus_dir / q
    if q.exists():
        return q
    for cand in (corpus_dir / "clips" / q.name, corpus_dir / q.name):
        if cand.exists():
            return cand
    return q


def _load(path: Path, sr: int = 24000) -> np.ndarray:
    import librosa

    try:
        wav, _ = librosa.load(str(path), sr=sr, mono=True)
    except Exception as e:
        raise InputError(f"corpus clip {path}: unreadable ({e.__class__.__name__}: {e})") from None
    return wav.astype(np.float32)


def _resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_SPEAKER_ENCODERS: dict[tuple[str, str], Any] = {}


def _speaker_encoder(device: str = "cpu", settings: Any = None) -> Any:
    """The configured speaker model (the corpus's, when both run with the same settings), loaded once per process."""
    from voicepipe.models import choose_speaker_model, load_speaker_encoder

    key = (device, choose_speaker_model(settings=settings).key)
    if key not in _SPEAKER_ENCODERS:
        _SPEAKER_ENCODERS.clear()  # one speaker model at a time
        _SPEAKER_ENCODERS[key] = load_speaker_encoder(device=device, settings=settings)
    return _SPEAKER_ENCODERS[key]


@lru_cache(maxsize=2)
def _asr(backend: str, device: str) -> Any:
    from voicepipe.evaluate.asr import load_asr

    return load_asr(backend, device=device)


def _checkpoint_speakers(path: str) -> list[str]:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return sorted((cfg.get("talker_config") or {}).get("spk_id") or {})


def prepare(checkpoints: str | Path, corpus: str | Path, config: EvalConfig | None = None, *,
            reference: str | Path | None = None, base: str | Path | None = None, speaker: str | None = None,
            out_dir: str | Path | None = None, store: Any = None, settings: Any = None) -> EvalContext:
    """Resolve the inputs and compute what every model is compared against (the target's held-out voice)."""
    cfg = config or EvalConfig()
    cfg = cfg.model_copy(update={"device": _resolve_device(cfg.device)})  # resolved where the evaluation runs
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    if out_dir is None:
        from voicepipe.config import load_settings

        home = Path((settings or load_settings()).home)
        out_dir = home / "eval" / f"{Path(str(checkpoints)).name or 'checkpoints'}-{stamp}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ck_dir = _fetch(str(checkpoints), "checkpoints", out / "inputs" / "checkpoints", store, settings)
    corpus_dir = _fetch(str(corpus), "corpus", out / "inputs" / "corpus", store, settings)
    training = read_training(ck_dir)
    entries = find_checkpoints(ck_dir, training)

    val_file = corpus_dir / "val_with_codes.jsonl"
    if not val_file.is_file():
        raise InputError(f"corpus {corpus}: no val_with_codes.jsonl (held-out clips are needed to score the voice)")
    val = [r for r in _read_jsonl(val_file) if r.get("audio")]
    if not val:
        raise InputError(f"corpus {corpus}: val_with_codes.jsonl has no clips")
    train_file = corpus_dir / "train_with_codes.jsonl"
    train = [r for r in _read_jsonl(train_file) if r.get("audio")] if train_file.is_file() else []
    info = {}
    if (corpus_dir / "corpus.json").is_file():
        info = json.loads((corpus_dir / "corpus.json").read_text())

    run_speaker = (training.get("run") or {}).get("speaker") if isinstance(training.get("run"), dict) else None
    spk = speaker or info.get("speaker") or run_speaker or (_checkpoint_speakers(entries[0].path) or [None])[0]
    if not spk:
        raise InputError(f"corpus {corpus}: no speaker name (pass --speaker)")
    spk = str(spk).strip().lower()

    # The target's voice: a centroid (fp32) of held-out real clips, by the configured speaker model.
    enc = _speaker_encoder(cfg.device, settings)
    held = val[: cfg.max_ref_clips]
    embs = []
    for r in held:
        e = M.embed_speaker(enc, _load(_clip_path(corpus_dir, r["audio"]), 16000), 16000)
        if e is not None:
            embs.append(e)
    if not embs:
        raise InputError(f"corpus {corpus}: none of {len(held)} held-out clips has enough voice to embed")
    cen = M.centroid(embs)
    speaker_model = enc.info.as_dict()
    built_with = (info.get("speaker_model") or {}).get("key") if isinstance(info.get("speaker_model"), dict) else None
    sm_warning = (f"the corpus chose its clips with speaker model {built_with}, SIM here is measured with "
                  f"{speaker_model['key']}: corpus and promotion may disagree on who the speaker is"
                  if built_with and built_with != speaker_model["key"] else None)

    # The base model's zero-shot clone gets a real TRAINING clip of the target (never one of the held-out clips
    # it is scored against), 3-15 s long, with 0.5 s of silence appended (stops the last phoneme bleeding in).
    pool = train or val
    ref_row = None
    for r in pool:
        wav = _load(_clip_path(corpus_dir, r["audio"]))
        if 3.0 <= len(wav) / 24000 <= 15.0:
            ref_row = (r, wav)
            break
    if ref_row is None:
        ref_row = (pool[0], _load(_clip_path(corpus_dir, pool[0]["audio"])))
    clone_wav = np.concatenate([ref_row[1], np.zeros(12000, np.float32)])

    script = cfg.script if cfg.script is not None else load_script()
    texts = [("script", t) for t in script] + [("val", str(r["text"])) for r in val[: cfg.max_val_texts]
                                               if r.get("text")]
    if not texts:
        raise InputError("evaluation script and validation texts are both empty")

    all_entries: list[Entry] = []
    run = training.get("run") if isinstance(training.get("run"), dict) else {}
    trained_base = run.get("base_model", training.get("base_model"))  # train writes run.base_model
    base_path = base or (trained_base if isinstance(trained_base, str) else None)
    if base_path:
        all_entries.append(Entry("base (zero-shot clone)", "base", str(base_path)))
    all_entries += entries
    if reference:
        all_entries.append(Entry(f"reference ({Path(str(reference)).name})", "reference", str(reference)))

    asr = _asr(cfg.asr, cfg.device)
    return EvalContext(config=cfg, out_dir=out, checkpoints_dir=ck_dir, corpus_dir=corpus_dir, speaker=spk,
                       texts=texts, centroid=cen, clone_ref=(clone_wav, 24000, ref_row[0].get("text")),
                       entries=all_entries, training=training, asr_name=asr.name,
                       mos_name=M.mos_backend() if cfg.mos else None, held_out=[str(r["audio"]) for r in held],
                       settings=settings, language=normalize_language(cfg.language) if cfg.language
                       else corpus_language(corpus_dir),
                       corpus_version=info.get("version") or (run or {}).get("corpus_version"),
                       speaker_model=speaker_model, real_sim=M.real_speech_sim(embs),
                       speaker_model_warning=sm_warning)


# ---- one model ------------------------------------------------------------------------------------------------


def _reason_key(reason: str) -> str:
    return reason.split(" (")[0]


def score_sample(ctx: EvalContext, kind: str, s: Any, wav_path: Path) -> SampleResult:
    """Validity, speaker similarity, ASR and MOS of one synthesized sample (`synth.Synthesis`); saves its wav."""
    import soundfile as sf

    cfg = ctx.config
    reasons = list(M.check_audio(s.wav, s.sr, s.text).reasons)
    if s.codes is not None:
        reasons += M.check_codes(s.codes).reasons
    if s.hit_cap:
        reasons.append(f"no end of speech within {s.max_new_tokens} frames")
    finite = bool(np.all(np.isfinite(s.wav)))
    wav = np.nan_to_num(np.asarray(s.wav, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(wav_path, np.clip(wav, -1, 1), s.sr, subtype="PCM_16")
    # Silence has no voice to compare or rate (resemblyzer would amplify numerical noise to -30 dBFS and embed it).
    audible = finite and len(wav) > 0 and not any(r.startswith(("silence", "empty audio")) for r in reasons)
    emb = M.embed_speaker(_speaker_encoder(cfg.device, ctx.settings), wav, s.sr) if audible else None
    hyp = _asr(cfg.asr, cfg.device).transcribe(wav, s.sr) if len(wav) else ""
    mos = M.predict_mos(wav, s.sr) if ctx.mos_name and audible else None
    rel = wav_path.relative_to(ctx.out_dir) if wav_path.is_relative_to(ctx.out_dir) else wav_path
    return SampleResult(kind=kind, text=s.text, wav=str(rel), audio_s=s.audio_s, compute_s=s.compute_s,
                        valid=not reasons, reasons=reasons, sim=None if emb is None else M.cosine(emb, ctx.centroid),
                        hypothesis=hyp, mos=mos)


def aggregate(row: Row) -> Row:
    """Fill a row's scores from its samples: SIM and MOS are means over the VALID samples (what the voice sounds
    like when it works; a row with no valid sample has none), WER and CER are corpus-level over ALL samples (an
    invalid sample counts with whatever the ASR heard), RTF is total compute over total audio."""
    row.n_samples = len(row.samples)
    row.n_valid = sum(s.valid for s in row.samples)
    row.invalid_reasons = {}
    for s in row.samples:
        for r in s.reasons:
            row.invalid_reasons[_reason_key(r)] = row.invalid_reasons.get(_reason_key(r), 0) + 1
    sims = [s.sim for s in row.samples if s.sim is not None and s.valid]
    row.sim = float(np.mean(sims)) if sims else None
    row.wer, row.cer = M.wer_cer([s.text for s in row.samples], [s.hypothesis for s in row.samples])
    moss = [s.mos for s in row.samples if s.mos and s.valid]
    row.mos_ovrl = float(np.mean([m["ovrl"] for m in moss])) if moss else None
    row.mos_p808 = float(np.mean([m["p808"] for m in moss])) if moss else None
    audio = sum(s.audio_s for s in row.samples)
    row.rtf = M.rtf(sum(s.compute_s for s in row.samples), audio) if audio > 0 else None
    return row


def evaluate_model(ctx: EvalContext, entry: Entry, on_sample: Callable[[int, int], None] | None = None) -> Row:
    """Load one model, synthesize every text, score every sample. Failures become a failed row, never a raise.

    Fine-tuned checkpoints (and the reference) are synthesized through the serving engine, all texts at once; the
    base model's zero-shot clone through the package's `generate_voice_clone` (see `voicepipe.evaluate.synth`).
    `on_sample(done, total)` is called after each scored sample (e.g. a Prefect progress artifact)."""
    import torch
    from tqdm import tqdm

    from voicepipe.evaluate.synth import max_new_tokens_for, synthesize, synthesize_batch
    from voicepipe.models import load_tts

    cfg = ctx.config
    row = Row(entry.name, entry.role, entry.path, entry.epoch, entry.val_loss, entry.train_loss)
    if not Path(entry.path).exists() and entry.role != "base":
        row.status, row.error = "failed", f"{entry.path}: not found"
        return row
    speaker = None
    if entry.role != "base":
        speakers = _checkpoint_speakers(entry.path)
        if speakers and ctx.speaker not in speakers:
            row.status, row.error = "failed", f"speaker {ctx.speaker!r} not in this checkpoint's speakers {speakers}"
            return row
        speaker = ctx.speaker
    tts = engine = None
    caps = [max_new_tokens_for(text, cfg.cap_s_per_char, cfg.cap_base_s, cfg.cap_max_frames) for _, text in ctx.texts]
    try:
        dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
        tts = load_tts(entry.path, device=cfg.device, dtype=dtype, settings=ctx.settings)
        sample_dir = ctx.out_dir / "samples" / re.sub(r"[^A-Za-z0-9._-]+", "_", entry.name).strip("_")
        sample_dir.mkdir(parents=True, exist_ok=True)
        if entry.role == "base":
            wav, sr, text = ctx.clone_ref
            clone = tts.create_voice_clone_prompt(ref_audio=(wav, sr), ref_text=text or None,
                                                  x_vector_only_mode=not text)
            row.language, row.synthesis = ctx.language, "package"
            synths = [synthesize(tts, text, clone_prompt=clone, language=ctx.language, seed=cfg.seed + i,
                                 max_new_tokens=cap, generate_kwargs=cfg.generate_kwargs)
                      for i, ((_, text), cap) in enumerate(tqdm(list(zip(ctx.texts, caps, strict=True)),
                                                                 desc=f"evaluate {entry.name}", leave=False))]
            wall = sum(s.compute_s for s in synths)
        else:
            from voicepipe.serve.engine import EngineConfig, TTSEngine

            longest = max(len(t.encode()) for _, t in ctx.texts)
            ecfg = EngineConfig(max_batch=min(cfg.batch, len(ctx.texts)), max_len=max(caps) + longest + 64)
            engine = TTSEngine(tts, ecfg, language=cfg.language)
            row.language, row.synthesis = engine.language, "engine"
            gen = engine.generation.with_overrides(**cfg.generate_kwargs) if cfg.generate_kwargs else None
            engine.start()
            synths, wall = synthesize_batch(engine, [t for _, t in ctx.texts], speaker=speaker, caps=caps,
                                            language=cfg.language, seed=cfg.seed, generation=gen)
        for i, ((kind, _), s) in enumerate(zip(ctx.texts, synths, strict=True)):
            row.samples.append(score_sample(ctx, kind, s, sample_dir / f"{i:02d}-{kind}.wav"))
            if on_sample is not None:
                on_sample(i + 1, len(ctx.texts))
        aggregate(row)
        audio = sum(s.audio_s for s in synths)
        row.rtf = M.rtf(wall, audio) if audio > 0 else None  # the generator's own: batch wall time / audio seconds
    except (VoicepipeError, ModelError) as e:
        row.status, row.error = "failed", str(e)
    except Exception as e:  # a broken checkpoint may fail anywhere in generation: record it, keep going
        row.status, row.error = "failed", f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        if engine is not None:
            engine.stop()
        del engine, tts
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


# ---- selection, report, promotion -----------------------------------------------------------------------------


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def finish(ctx: EvalContext, rows: list[Row]) -> EvalResult:
    """Compare with the base and the reference, select, and write results.json, report.md, report.html."""
    from voicepipe.evaluate.report import write_reports

    base = next((r for r in rows if r.role == "base" and r.status == "ok" and r.sim is not None), None)
    ref = next((r for r in rows if r.role == "reference" and r.status == "ok" and r.sim is not None), None)
    for r in rows:
        if r.sim is not None:
            r.sim_vs_base = r.sim - base.sim if base and r is not base else None
            r.sim_vs_reference = r.sim - ref.sim if ref and r is not ref else None
        r.wer, r.cer = _finite(r.wer), _finite(r.cer)
    sel = select_checkpoint(rows, ctx.config.rule(ctx.speaker_model))
    result = EvalResult(rows=rows, selection=sel, speaker=ctx.speaker, out_dir=ctx.out_dir, asr_name=ctx.asr_name,
                        mos_name=ctx.mos_name, speaker_model=ctx.speaker_model)
    result.results_json = ctx.out_dir / "results.json"
    result.results_json.write_text(json.dumps(result_dict(result, ctx), indent=2, default=str) + "\n")
    write_reports(result, ctx)
    return result


def result_dict(result: EvalResult, ctx: EvalContext | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {
        "speaker": result.speaker,
        "asr": result.asr_name,
        "mos": result.mos_name or "none",
        "speaker_model": result.speaker_model,
        "selection": asdict(result.selection),
        "rows": [asdict(r) for r in result.rows],
    }
    if ctx is not None:
        d["config"] = ctx.config.model_dump()
        d["checkpoints"] = str(ctx.checkpoints_dir)
        d["corpus"] = str(ctx.corpus_dir)
        d["held_out_clips"] = ctx.held_out
        d["real_speech_sim"] = ctx.real_sim
        d["speaker_model_warning"] = ctx.speaker_model_warning
    return d


def voice_card(result: EvalResult, row: Row, corpus_version: str | None = None) -> dict[str, Any]:
    """Why this voice was chosen, as the registry and `GET /v1/voices` show it: corpus version, checkpoint,
    prompt language and the evaluation summary (SIM vs the base model's zero-shot clone, WER, validity)."""
    base = next((r for r in result.rows if r.role == "base" and r.status == "ok"), None)
    return {
        "speaker": result.speaker,
        "corpus_version": corpus_version,
        "checkpoint": row.name,
        "epoch": row.epoch,
        "language": row.language,
        "selection_rule": result.selection.rule,
        "reason": result.selection.reason,
        "evaluation": {
            "sim": row.sim, "base_sim": base.sim if base else None, "sim_vs_base": row.sim_vs_base,
            "wer": row.wer, "cer": row.cer, "valid": row.n_valid, "samples": row.n_samples,
            "valid_fraction": round(row.valid_fraction, 4), "mos_ovrl": row.mos_ovrl, "rtf": row.rtf,
            "val_loss": row.val_loss, "asr": result.asr_name, "synthesis": row.synthesis,
        },
    }  # fmt: skip


def promote(store: Any, result: EvalResult, *, inputs: list[str] = (), corpus_version: str | None = None
            ) -> dict[str, Any] | None:  # fmt: skip
    """Store the chosen checkpoint (`put_dir`) and point `voices/<speaker>` at it with its card (`voice_card`).

    Does nothing (returns None) when the selection is not promotable; refuses a row that is not valid (unless the
    selection was made by the plumbing rule, which the card then records).
    """
    sel = result.selection
    if not sel.promotable or sel.chosen is None:
        return None
    row = result.row(sel.chosen)
    if row.role != "checkpoint" or row.status != "ok" or row.n_samples == 0:
        raise VoicepipeError(f"checkpoint {row.name}: not a checkpoint that synthesized, refusing to promote it")
    if row.n_valid == 0 and sel.rule != "plumbing":
        raise VoicepipeError(f"checkpoint {row.name}: not valid ({row.n_valid}/{row.n_samples} samples), "
                             "refusing to promote it")
    if corpus_version is None:
        corpus_version = read_voice_meta(row.path).get("corpus_version")
    params = {"speaker": result.speaker, "checkpoint": row.name, "rule": sel.reason}
    tree = store.put_dir(row.path, step="evaluate.promote", inputs=list(inputs), params=params,
                         name=f"{result.speaker}-{row.name}")
    extra = dict(row.scores(), asr=result.asr_name, mos_model=result.mos_name, reason=sel.reason,
                 sim_model=result.speaker_model.get("key"), sim_margin=sel.sim_margin,
                 promoted_at=datetime.now(UTC).isoformat(timespec="seconds"),
                 card=voice_card(result, row, corpus_version))
    if result.report_md is not None:
        extra["report_md"] = store.put_file(result.report_md, step="evaluate.report", inputs=[tree.sha256]).sha256
        extra["card"]["report_md"] = extra["report_md"]
    value = store.set_ref(f"voices/{result.speaker}", tree.sha256, extra=extra)
    result.promoted = value
    return value


def evaluate_checkpoints(checkpoints: str | Path, corpus: str | Path, config: EvalConfig | None = None, *,
                         reference: str | Path | None = None, base: str | Path | None = None,
                         speaker: str | None = None, out_dir: str | Path | None = None, store: Any = None,
                         settings: Any = None, promote_best: bool = True) -> EvalResult:
    """Evaluate the base model's zero-shot clone, every checkpoint and the reference; select; store; promote."""
    t0 = time.perf_counter()
    ctx = prepare(checkpoints, corpus, config, reference=reference, base=base, speaker=speaker, out_dir=out_dir,
                  store=store, settings=settings)
    rows = [evaluate_model(ctx, e) for e in ctx.entries]
    result = finish(ctx, rows)
    if store is not None:
        result.stored = store_reports(store, result)
        if promote_best:
            promote(store, result, corpus_version=ctx.corpus_version)
    result.elapsed_s = time.perf_counter() - t0
    return result


def store_reports(store: Any, result: EvalResult) -> dict[str, dict[str, str]]:
    """Put report.md, report.html, metrics.png and results.json in the store: {file name: {sha256, uri}}."""
    out = {}
    for p in (result.report_md, result.report_html, result.plot_png, result.results_json):
        if p is not None and p.is_file():
            ref = store.put_file(p, step="evaluate.report", params={"speaker": result.speaker},
                                 name=f"eval-{result.speaker}-{p.name}")
            out[p.name] = {"sha256": ref.sha256, "uri": str(ref.uri)}
    return out
