"""`train_voice`: fine-tune Qwen3-TTS on one corpus version (one task: the recipe; GPU work pool).

    train_task(corpus, base, speaker, out, config)     tasks/train.py -> voicepipe.train.train

Parameters: a `TrainParams` (the Prefect UI's form) or the same fields as keywords (flows/_params.py).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows._params import flow_params
from voicepipe.train import TrainConfig


class TrainParams(BaseModel):
    """Parameters of one training run (the Prefect UI renders this as a form)."""

    corpus: str = Field(..., description="Corpus dir, s3://bucket/prefix, or store:<ref-or-sha>.")
    base: str = Field("Qwen/Qwen3-TTS-12Hz-1.7B-Base", description="Base model dir or a name resolve_model knows.")
    speaker: str = Field(..., description="Speaker name written into the checkpoints.")
    out: str = Field(..., description="Output dir (epoch-NNN/, training.json, loss.png).")
    config: str = Field("v8", description="Training config: a name in voicepipe/train/configs or a YAML path.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Config overrides (epochs, lr, ...).")
    store_url: str | None = Field(None, description="Artifact store (default: settings).")
    resume: bool = Field(True, description="Continue a killed run in the same out dir.")


@flow(name="train-voice", log_prints=True)
def train_voice(
    params: TrainParams | None = None,
    corpus: str | None = None,
    base: str | None = None,
    speaker: str | None = None,
    out: str | None = None,
    config: str = "v8",
    overrides: dict[str, Any] | None = None,
    store_url: str | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Fine-tune and upload the kept checkpoints + training.json. Pass `params`, or its fields as keywords."""
    from tasks.train import train_task
    from voicepipe.train import load_config

    p = flow_params(TrainParams, params, flow="train_voice", required=("corpus", "speaker", "out"), corpus=corpus,
                    base=base, speaker=speaker, out=out, config=config, overrides=overrides, store_url=store_url,
                    resume=resume)  # fmt: skip
    cfg: TrainConfig = load_config(p.config, **p.overrides)
    result = train_task(p.corpus, p.base, p.speaker, p.out, cfg, store_url=p.store_url, resume=p.resume)
    print(f"train_voice {p.speaker}: {result['status']} {result['stop_reason'] or ''} -> {result['out_dir']}")
    return result
