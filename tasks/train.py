"""Prefect task of the training stage: a thin wrapper over `voicepipe.train.train`."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import Progress, publish_link, publish_markdown, publish_table
from voicepipe.train import TrainConfig, train


@task(name="train-voice", task_run_name="train-{speaker}", cache_policy=NO_CACHE)
def train_task(corpus: str, base: str, speaker: str, out: str, config: TrainConfig, store_url: str | None = None,
               resume: bool = True) -> dict[str, Any]:  # fmt: skip
    """Fine-tune (resumes a killed run in the same out dir); publish per-epoch metrics and the loss curve."""
    from voicepipe.config import load_settings

    settings = load_settings(**({"store_url": store_url} if store_url else {}))
    bar = Progress(f"train-{speaker}-progress", f"training {speaker}")

    def on_progress(p: dict[str, Any]) -> None:
        bar.update(p["step"], p["total_steps"], f"epoch {p['epoch']}/{p['epochs']}, step {p['step']}/"
                   f"{p['total_steps']}, loss {p['loss']:.4f}")

    r = train(corpus, base, speaker, out, config, settings=settings, store=settings, resume=resume, progress=False,
              on_progress=on_progress)
    bar.finish(f"{r.status} {r.stop_reason or ''}".strip())
    key = f"train-{speaker}"
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in e.items()} for e in r.epochs]
    publish_table(f"{key}-epochs", rows or [{"epoch": "-"}], description=f"{r.status} {r.stop_reason or ''}")
    best = ", ".join(f"{b['checkpoint']} (val {b['val_loss']:.4f})" for b in r.best) or "none"
    publish_markdown(f"{key}-summary", f"**{r.status}** {r.stop_reason or ''}\n\nbest: {best}\n\nout: `{r.out_dir}`")
    if r.store and r.store.get("training_json"):
        from voicepipe.store import open_store
        from voicepipe.store.links import browser_link

        st = open_store(settings)
        publish_link(f"{key}-training-json", browser_link(st, r.store["training_json"], "training.json", settings),
                     description="training.json in the artifact store")
        if r.store.get("loss_png"):
            publish_link(f"{key}-loss-png", browser_link(st, r.store["loss_png"], "loss.png", settings),
                         description="training/validation loss curve")
    return dict(out_dir=str(r.out_dir), status=r.status, stop_reason=r.stop_reason, best=r.best, epochs=r.epochs,
                store=r.store, training_json=str(r.training_json))  # fmt: skip
