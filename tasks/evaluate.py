"""Prefect tasks of the evaluation stage: thin wrappers over `voicepipe.evaluate.runner`.

One task per evaluated model, so the UI shows which checkpoint was slow or failed; results are never cached
(a checkpoint dir's content is not in the inputs), and models run one at a time (they share one device).
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import IO_RETRIES, Progress, publish_link, publish_markdown, publish_table
from voicepipe.corpus.assemble import inline_images
from voicepipe.evaluate import runner
from voicepipe.evaluate.runner import EvalConfig, EvalContext, EvalResult, Row


@task(name="prepare-evaluation", cache_policy=NO_CACHE)
def prepare_evaluation(checkpoints: str, corpus: str, config: EvalConfig, *, reference: str | None = None,
                       base: str | None = None, speaker: str | None = None, out_dir: str | None = None,
                       store: Any = None, settings: Any = None) -> EvalContext:
    """Resolve inputs, embed the held-out real clips of the target, load the ASR."""
    return runner.prepare(checkpoints, corpus, config, reference=reference, base=base, speaker=speaker, out_dir=out_dir,
                   store=store, settings=settings)


@task(name="evaluate-model", task_run_name="evaluate-{entry.name}", cache_policy=NO_CACHE)
def evaluate_model(ctx: EvalContext, entry: runner.Entry) -> Row:
    """Synthesize and score one model (base zero-shot clone, a checkpoint, or the reference); a progress artifact
    counts its samples."""
    bar = Progress(f"evaluate-{ctx.speaker}-{entry.name}-progress", f"evaluating {entry.name}", every_s=3.0)
    row = runner.evaluate_model(ctx, entry, on_sample=lambda done, total: bar.update(done, total,
                                                                                      f"sample {done}/{total}"))
    bar.finish(f"{row.status} {row.error or ''}".strip())
    return row


@task(name="select-and-report", cache_policy=NO_CACHE)
def select_and_report(ctx: EvalContext, rows: list[Row]) -> EvalResult:
    """Apply the selection rule, write report.md / report.html / metrics.png, attach them as artifacts."""
    from voicepipe.evaluate.report import table_rows

    result = runner.finish(ctx, rows)
    key = f"evaluation-{result.speaker}"
    publish_table(f"{key}-table", table_rows(result), description=f"checkpoint metrics for {result.speaker}")
    if result.report_md is not None:
        # the UI cannot follow report.md's relative metrics.png link: its artifact copy carries the plot inline
        publish_markdown(f"{key}-report", inline_images(result.report_md.read_text(encoding="utf-8"),
                                                        result.report_md.parent), description=result.selection.reason)
    return result


@task(name="store-and-promote", cache_policy=NO_CACHE, **IO_RETRIES)
def store_and_promote(store: Any, result: EvalResult, promote_best: bool = True) -> dict[str, Any]:
    """Store the reports, promote the selected checkpoint to `voices/<speaker>`, link both from the run."""
    from voicepipe.store.links import browser_link

    stored = runner.store_reports(store, result)
    result.stored = stored
    for name, ref in stored.items():  # links a browser opens (report.html is self-contained: plot and audio inline)
        publish_link(f"evaluation-{result.speaker}-{name}", browser_link(store, ref["sha256"], name),
                     description=f"{name} ({ref['sha256'][:12]})", text=f"{name} ({ref['sha256'][:12]})")
    value = runner.promote(store, result) if promote_best else None
    return {
        "speaker": result.speaker,
        "chosen": result.selection.chosen,
        "promotable": result.selection.promotable,
        "promoted": value is not None,
        "voice_sha": value["sha"] if value else None,
        "reason": result.selection.reason,
        "reports": stored,
        "report_html": str(result.report_html),
        "rows": [r.scores() | {"status": r.status, "error": r.error, "role": r.role} for r in result.rows],
    }
