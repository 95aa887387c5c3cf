"""`evaluate_checkpoints`: does the fine-tune sound like the speaker? Answered by numbers, for every checkpoint.

    prepare_evaluation                 inputs, held-out real clips -> the target's voice centroid, ASR
      -> evaluate_model  x N           base model's zero-shot clone (the floor), epoch-001 … epoch-NNN, --reference
      -> select_and_report             selection rule, report.md / report.html / metrics.png (+ Prefect artifacts)
      -> store_and_promote             reports into the store; voices/<speaker> -> the chosen checkpoint

Parameters: an `EvaluateParams` (the Prefect UI's form) or the same fields as keywords (flows/_params.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from flows._params import flow_params
from voicepipe.evaluate.runner import EvalConfig


class EvaluateParams(BaseModel):
    """Parameters of one evaluation run (the Prefect UI renders this as a form)."""

    checkpoints: str = Field(..., description="Training output dir (epoch-NNN/ + training.json), s3:// or store ref.")
    corpus: str = Field(..., description="Corpus dir, or store:<ref> / a store sha (val_with_codes.jsonl inside).")
    speaker: str | None = Field(None, description="Speaker name (default: corpus.json's).")
    base: str | None = Field(None, description="Base model for the zero-shot clone floor (default: training.json's).")
    reference: str | None = Field(None, description="Reference checkpoint shown as a column (never promoted).")
    config: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    out_dir: str | None = Field(None, description="Output dir (default <home>/eval/<name>-<time>).")
    promote: bool = Field(True, description="Promote the selected checkpoint to voices/<speaker>.")
    store_url: str | None = Field(None, description="Artifact store (default: settings).")


@flow(name="evaluate-checkpoints", log_prints=True)
def evaluate_checkpoints(
    params: EvaluateParams | None = None,
    checkpoints: str | None = None,
    corpus: str | None = None,
    speaker: str | None = None,
    base: str | None = None,
    reference: str | None = None,
    overrides: dict[str, Any] | None = None,
    promote: bool = True,
    store_url: str | None = None,
) -> dict[str, Any]:
    """Evaluate every checkpoint, pick the best by the documented rule, promote it. Pass `params`, or the same
    fields as keywords (`overrides` are EvalConfig fields)."""
    from tasks.evaluate import evaluate_model, prepare_evaluation, select_and_report, store_and_promote
    from voicepipe.config import load_settings
    from voicepipe.store import open_store

    params = flow_params(EvaluateParams, params, flow="evaluate_checkpoints", required=("checkpoints", "corpus"),
                         checkpoints=checkpoints, corpus=corpus, speaker=speaker, base=base, reference=reference,
                         config=EvalConfig(**(overrides or {})), promote=promote, store_url=store_url)  # fmt: skip
    log = get_run_logger()
    settings = load_settings(**({"store_url": params.store_url} if params.store_url else {}))
    store = open_store(settings)
    ctx = prepare_evaluation(
        params.checkpoints,
        params.corpus,
        params.config,
        reference=params.reference,
        base=params.base,
        speaker=params.speaker,
        out_dir=params.out_dir,
        store=store,
        settings=settings,
    )
    log.info("evaluating %d models for %s with ASR %s", len(ctx.entries), ctx.speaker, ctx.asr_name)
    rows = [evaluate_model(ctx, e) for e in ctx.entries]  # sequential: the models share one device
    result = select_and_report(ctx, rows)
    summary = store_and_promote(store, result, params.promote)
    log.info(
        "selected %s (%s): %s",
        summary["chosen"],
        "promoted" if summary["promoted"] else "not promoted",
        summary["reason"],
    )
    return summary
