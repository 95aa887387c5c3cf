"""The studio server's state: its settings, the session, and the engines that check takes (loaded once, lazily)."""

from __future__ import annotations

import io
import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Request
from pydantic import BaseModel, Field

from voicepipe.errors import InputError
from voicepipe.studio.checks import Thresholds, check_take
from voicepipe.studio.session import StudioSession, Take

log = logging.getLogger(__name__)
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # ~17 min of 48 kHz 16-bit mono: no single prompt takes that long


class StudioConfig(BaseModel):
    """Everything `voicepipe studio` can be told."""

    speaker: str
    session: str = "main"
    script: Path | None = Field(None, description="Script file (one prompt a line); None: the session's, or CMU "
                                                  "ARCTIC for a new session.")
    language: str | None = Field(None, description="espeak-ng voice of the script (phonemes), e.g. en-us, de, fr.")
    asr_language: str | None = Field(None, description="Whisper language of the script (None: from `language`).")
    target_minutes: float | None = Field(None, gt=0, description="Minutes of kept speech to aim for (new: 45).")
    store_url: str | None = None
    asr_backend: Literal["auto", "whisper", "pocketsphinx", "none"] = "auto"
    asr_model: str | None = None
    device: str = "cpu"
    dnsmos: bool = True
    thresholds: Thresholds = Field(default_factory=Thresholds)


class Studio:
    """A session plus the checks: what every request of the studio server works on."""

    def __init__(self, config: StudioConfig, store: Any = None, settings: Any = None) -> None:
        from voicepipe.studio.script import load_script

        if store is None:
            from voicepipe.config import load_settings
            from voicepipe.store import open_store

            settings = settings or load_settings()
            store = open_store(config.store_url or settings)
        self.config = config
        self.settings = settings
        self.store = store
        script = load_script(config.script, config.language or "en-us") if config.script else None
        self.session = StudioSession(store, config.speaker, config.session, script=script, language=config.language,
                                     target_minutes=config.target_minutes)
        self._engines: dict[str, Any] = {}
        self._lock = threading.Lock()
        # the slower checks (words, DNSMOS) run here, one take at a time, after the fast ones have answered
        self._slow = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-checks")
        for take in self.session.doc.takes:  # a server stopped while checking: finish those checks now
            if take.checking:
                self._slow.submit(self._recheck, take.id)

    # ---- engines
    def vad(self) -> Any:
        with self._lock:
            if "vad" not in self._engines:
                from voicepipe.corpus.engines import Vad

                self._engines["vad"] = Vad()
            return self._engines["vad"]

    def asr(self) -> Any:
        """The recogniser for the words check (None when off, or PocketSphinx for a language it cannot do)."""
        cfg = self.config
        if cfg.asr_backend == "none":
            return None
        with self._lock:
            if "asr" not in self._engines:
                from voicepipe.models.asr import Asr

                self._engines["asr"] = Asr(cfg.asr_backend, cfg.asr_model, cfg.device, self.settings)
            asr = self._engines["asr"]
        if asr.backend == "pocketsphinx" and not self.asr_language().startswith("en"):
            return None  # its bundled model is US English only
        return asr

    def asr_language(self) -> str:
        return (self.config.asr_language or self.session.doc.language or "en").split("-")[0]

    def warm_up(self) -> None:
        """Load the VAD, the recogniser and the script's phonemes now (not on the first take)."""
        self.vad()
        self.asr()
        self.session.script.phones()

    # ---- takes
    def record(self, prompt_id: str, data: bytes, content_type: str = "audio/wav") -> Take:
        """Decode, check and store one uploaded take: the fast checks (levels, noise, rate, edges) answer at once,
        the words (ASR) and DNSMOS follow in the background (`Take.checking` until then)."""
        if not data:
            raise InputError("take upload: empty body (send the recorded audio, e.g. a WAV file)")
        if len(data) > MAX_UPLOAD_BYTES:
            raise InputError(f"take upload: {len(data) / 1e6:.0f} MB is over the {MAX_UPLOAD_BYTES / 1e6:.0f} MB "
                             "limit for one prompt")
        prompt = self.session.script.by_id().get(prompt_id)
        if prompt is None:
            raise InputError(f"take upload: prompt {prompt_id!r} is not in the script {self.session.script.name}")
        wav, sr = decode_upload(data)
        slow = self.asr() is not None or self.config.dnsmos
        fast = self._check(wav, sr, prompt_id, full=False)
        take = self.session.add_take(prompt_id, data, sr=sr, seconds=wav.size / sr, check=fast,
                                     content_type=content_type or "audio/wav", checking=slow)
        if take.checking:
            self._slow.submit(self._full, take.id, wav, sr, prompt_id)
        return take

    def _check(self, wav: np.ndarray, sr: int, prompt_id: str, full: bool) -> dict:
        text = self.session.script.by_id()[prompt_id].text
        phones = self.session.script.phones([prompt_id])[prompt_id]
        return check_take(wav, sr, text, phones=phones, vad=self.vad(), asr=self.asr() if full else None,
                          asr_language=self.asr_language(), dnsmos=self.config.dnsmos and full,
                          th=self.config.thresholds)

    def _full(self, take_id: str, wav: np.ndarray, sr: int, prompt_id: str) -> None:
        try:
            result = self._check(wav, sr, prompt_id, full=True)
        except Exception:  # noqa: BLE001 - the fast checks stand; the page must not wait forever
            log.exception("studio: the full checks of take %s failed", take_id)
            result = None
        self.session.update_checks(take_id, result)

    def _recheck(self, take_id: str) -> None:
        take = self.session.take(take_id)
        if take is None or take.prompt_id not in self.session.script.by_id():
            self.session.update_checks(take_id, None)
            return
        wav, sr = decode_upload(self.store.get_bytes(take.audio_sha))
        self._full(take_id, wav, sr, take.prompt_id)

    def close(self) -> None:
        """Let the running checks finish."""
        self._slow.shutdown(wait=True)


def decode_upload(data: bytes) -> tuple[np.ndarray, int]:
    """Uploaded audio -> (float32 mono at its own rate, rate). WAV/FLAC/Ogg via soundfile; anything else (a browser's
    WebM/Opus, MP4) via ffmpeg at 48 kHz. The rate is kept: resampling would hide clipped flat tops."""
    import soundfile as sf

    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        return x.mean(axis=1), int(sr)
    except (sf.LibsndfileError, RuntimeError, ValueError):
        pass
    from voicepipe.audio import load_audio

    with tempfile.TemporaryDirectory(prefix="voicepipe-take-") as tmp:
        path = Path(tmp) / "take"
        path.write_bytes(data)
        try:
            return load_audio(path, 48000), 48000
        except InputError as e:
            raise InputError(f"take upload: not audio that can be decoded ({str(e).split(': ', 1)[-1]})") from None


def get_studio(request: Request) -> Studio:
    return request.app.state.studio
