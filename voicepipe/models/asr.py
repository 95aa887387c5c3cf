"""One speech recogniser for every stage: Whisper (transformers) or PocketSphinx (real English model in its wheel).

`Asr(backend, model, device, settings, ...)` with backend `whisper | pocketsphinx | auto` (auto: Whisper when its
files resolve locally, else PocketSphinx). `transcribe(wavs, language, sr=16000) -> [(text, confidence in [0, 1])]`.
Confidence: PocketSphinx = mean bestpath word posterior; Whisper = exp(mean log-prob of the non-special tokens).
Whisper runs through the model + processor, never transformers' ASR pipeline (it imports a CUDA-linked torchcodec).
The options in which the corpus and the evaluator deliberately differ are constructor parameters.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np

from voicepipe.errors import ModelError

SR = 16000
WINDOW_S = 30  # Whisper's receptive field: longer audio is transcribed in consecutive 30 s windows


def to16k(wav: np.ndarray, sr: int) -> np.ndarray:
    """Mono float32 at 16 kHz (NaN/inf -> 0)."""
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if sr == SR:
        return x
    import librosa

    return librosa.resample(x, orig_sr=sr, target_sr=SR)


class Asr:
    """Speech recognition returning (text, confidence in [0, 1]) per waveform; thread-safe (one call at a time).

    - `sphinx_options`: extra `pocketsphinx.Decoder` options (e.g. `fwdflat=False, maxhmmpf=3000` for speed);
      None = PocketSphinx's defaults.
    - `overload`: how PocketSphinx input beyond [-1, 1] becomes int16 PCM: `clip`, or `normalize` by the peak.
    - `max_new_tokens`: Whisper's cap per 30 s window (never past the model's decoder length).
    """

    sr = SR

    def __init__(
        self,
        backend: str = "auto",
        model: str | Path | None = None,
        device: str = "cpu",
        settings: Any = None,
        *,
        sphinx_options: dict[str, Any] | None = None,
        overload: Literal["clip", "normalize"] = "clip",
        max_new_tokens: int = 200,
    ) -> None:
        if backend not in ("whisper", "pocketsphinx", "auto"):
            raise ModelError(f"asr backend {backend!r}: unknown (expected whisper, pocketsphinx or auto)")
        self.device = device
        self.overload = overload
        self.lock = threading.Lock()
        if backend in ("whisper", "auto"):
            try:
                self._load_whisper(model, device, settings, max_new_tokens)
                return
            except (ModelError, ImportError, TypeError):
                if backend == "whisper":
                    raise
        self._load_sphinx(sphinx_options)

    def _load_sphinx(self, options: dict[str, Any] | None) -> None:
        from pocketsphinx import Decoder

        self.backend, self.name = "pocketsphinx", "pocketsphinx-en-us"
        self.decoder = Decoder(**{"samprate": SR, "loglevel": "ERROR", **(options or {})})

    def _load_whisper(self, model: str | Path | None, device: str, settings: Any, max_new_tokens: int) -> None:
        import torch

        from voicepipe.models.others import load_asr
        from voicepipe.models.resolve import resolve_model

        where = resolve_model("asr", model, settings)
        self.dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        self.model, self.processor = load_asr(where, device, self.dtype, settings)
        self.backend, self.name = "whisper", f"whisper:{getattr(where, 'name', where)}"
        self.max_new_tokens = min(max_new_tokens, int(self.model.config.max_target_positions) - 8)

    def transcribe(
        self, wavs: list[np.ndarray], language: str | None = None, *, sr: int = SR
    ) -> list[tuple[str, float]]:
        """(text, confidence) per waveform; ("", 0.0) for empty audio. `language` steers Whisper (None: detect)."""
        xs = [to16k(w, sr) for w in wavs]
        if self.backend == "pocketsphinx":
            return [self._sphinx(x) if len(x) else ("", 0.0) for x in xs]
        return self._whisper(xs, language)

    def _sphinx(self, x: np.ndarray) -> tuple[str, float]:
        if self.overload == "normalize":
            peak = float(np.max(np.abs(x)))
            x = x / peak if peak > 1.0 else x
        else:
            x = np.clip(x, -1, 1)
        pcm = (x * 32767).astype("<i2").tobytes()
        with self.lock:
            # Each utterance is decoded as by a fresh Decoder: otherwise state carries over from the previous one
            # (the noise-removal estimate that the en-us model's feat.params turn on, and the PTM top-N Gaussian
            # history), so a clip's text and confidence depended on what this decoder had decoded before (CMN is
            # already per-utterance `batch`). reinit_feat() alone fixes the text but not the last digits of the
            # confidence; reinit() reloads the model from the same config (~0.25 s, a new Decoder ~0.4 s).
            self.decoder.reinit()
            self.decoder.start_utt()
            self.decoder.process_raw(pcm, full_utt=True)
            self.decoder.end_utt()
            # seg() is None when the search ended without a hypothesis (seen on a 45 s flite episode's piece)
            words = [(s.word, s.prob) for s in self.decoder.seg() or []]
        words = [(w.split("(")[0], p) for w, p in words if not (w.startswith("<") or w.startswith("["))]
        if not words:
            return "", 0.0
        return " ".join(w for w, _ in words), float(np.mean([p for _, p in words]))

    def _generate(self, feats: Any, language: str | None) -> tuple[Any, Any]:
        """Greedy decode, then the log-probability of each generated token from ONE teacher-forced decoder pass.

        `generate(return_dict_in_generate=True, output_scores=True)` would give the same numbers, but Whisper's
        generate then splits every output (KV cache included) per batch item onto the CPU: 4x slower on an H100 at
        batch 32. The encoder runs once; its output feeds language detection, generate and the scoring pass.
        Returns (generated ids without the prompt (B, T), their log-probs (B, T), renormalised after the same token
        suppression generate applied)."""
        import torch

        cfg = self.model.generation_config
        enc = self.model.get_encoder()(feats)
        n = feats.shape[0]
        prompt = [[cfg.decoder_start_token_id] for _ in range(n)]
        kwargs: dict[str, Any] = {}
        if getattr(cfg, "is_multilingual", False):
            if language:
                token = self._lang_token(language)
                if token not in cfg.lang_to_id:
                    raise ModelError(f"whisper language {language!r}: this model has no {token} token")
                kwargs["language"] = token
                lang_ids = [cfg.lang_to_id[token]] * n
            else:
                lang_ids = self.model.detect_language(encoder_outputs=enc).view(-1).tolist()
                kwargs["language"] = self.processor.tokenizer.convert_ids_to_tokens(lang_ids)
            kwargs["task"] = "transcribe"
            prompt = [[*p, lid, cfg.task_to_id["transcribe"]] for p, lid in zip(prompt, lang_ids, strict=True)]
        prompt = [[*p, cfg.no_timestamps_token_id] for p in prompt]
        # a static KV cache: 1.27x faster greedy decoding than the dynamic one on an H100 (benchmarks/RESULTS.md)
        gen = self.model.generate(
            encoder_outputs=enc, max_new_tokens=self.max_new_tokens, cache_implementation="static", **kwargs
        )
        full = torch.cat([torch.tensor(prompt, device=gen.device, dtype=gen.dtype), gen], dim=1)
        logits = self.model(encoder_outputs=enc, decoder_input_ids=full[:, :-1]).logits.float()
        if cfg.suppress_tokens:
            logits[..., list(cfg.suppress_tokens)] = float("-inf")
        if cfg.begin_suppress_tokens:  # generate forbids these as the first token only
            logits[:, len(prompt[0]) - 1, list(cfg.begin_suppress_tokens)] = float("-inf")
        logp = torch.log_softmax(logits, dim=-1).gather(-1, full[:, 1:, None])[..., 0]
        return gen, logp[:, len(prompt[0]) - 1 :]

    def _lang_token(self, language: str) -> str:
        """'en' / 'english' / '<|en|>' -> '<|en|>' (Whisper's own mapping)."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        lang = language.lower()
        if lang.startswith("<|"):
            return lang
        code = lang if lang in LANGUAGES else TO_LANGUAGE_CODE.get(lang)
        if code is None:
            raise ModelError(f"whisper language {language!r}: unknown")
        return f"<|{code}|>"

    def _whisper(self, xs: list[np.ndarray], language: str | None) -> list[tuple[str, float]]:
        import torch

        win = WINDOW_S * SR
        owner, windows = [], []  # every 30 s window of every waveform, decoded in one batch
        for i, x in enumerate(xs):
            for start in range(0, len(x), win):
                owner.append(i)
                windows.append(x[start : start + win])
        if not windows:
            return [("", 0.0)] * len(xs)
        # log-mels computed with torch on the model's device (the numpy path costs more than the encoder on a GPU)
        feats = self.processor(windows, sampling_rate=SR, return_tensors="pt", device=str(self.device))
        with self.lock, torch.inference_mode():
            gen, logp = self._generate(feats.input_features.to(self.device, self.dtype), language)
        texts = self.processor.batch_decode(gen, skip_special_tokens=True)
        scores = logp.cpu()
        special = set(self.processor.tokenizer.all_special_ids)
        parts: list[list[str]] = [[] for _ in xs]
        logps: list[list[torch.Tensor]] = [[] for _ in xs]
        for j, (i, text) in enumerate(zip(owner, texts, strict=True)):
            mask = torch.tensor([int(t) not in special for t in gen[j].tolist()])
            parts[i].append(text)
            logps[i].append(scores[j][mask].float())
        results = []
        for i in range(len(xs)):
            if not parts[i]:
                results.append(("", 0.0))
                continue
            # one window: the decoded text as is; several: the windows' stripped texts joined by a space
            text = parts[i][0] if len(parts[i]) == 1 else " ".join(t.strip() for t in parts[i] if t.strip())
            lp = torch.cat(logps[i])
            results.append((text, float(torch.exp(lp.mean())) if lp.numel() else 0.0))
        return results
