"""Training hyper-parameters: a pydantic model whose defaults are the seed's working v8 run.

The YAML files in `voicepipe/train/configs/` are the user-facing form; `load_config` merges one of them (or any
YAML path) with keyword overrides and validates the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from voicepipe.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"


class LoraSettings(BaseModel):
    """LoRA adapters (peft) on the talker's and code predictor's projections; merged into full weights at export."""

    model_config = ConfigDict(extra="forbid")

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(BaseModel):
    """One fine-tuning run. Defaults = v8: full fine-tune, lr 2e-5, AdamW wd 0.01, clip 1.0, batch 2 x accum 4."""

    model_config = ConfigDict(extra="forbid")

    # optimisation (v8)
    method: Literal["full", "lora"] = "full"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: int = Field(10, ge=1)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    batch_size: int = Field(2, ge=1)  # utterances per micro-batch (per process)
    grad_accum: int = Field(4, ge=1)  # micro-batches per optimizer step (per process)
    # Optional token budget (padded tokens) for one micro-batch. When set, the utterances of one optimizer step
    # (batch_size * grad_accum per process) are regrouped by length into as few micro-batches as fit the budget.
    # The loss is a token mean over the whole optimizer step, so this changes speed, not the gradient.
    micro_batch_tokens: int | None = None
    # Packing (voicepipe/train/packing.py): the utterances of a micro-batch end to end in one row with per-utterance
    # attention (no padding between them), up to `micro_batch_tokens` tokens. Same loss and gradients as padding.
    pack: bool = False
    # Token budget of one optimizer step (real talker tokens, all processes together) instead of
    # batch_size * grad_accum utterances; needs `pack`. The loss stays a token mean over the step.
    step_tokens: int | None = Field(None, ge=1)
    packed_attention: Literal["auto", "varlen", "flex", "sdpa"] = "auto"  # auto: flash varlen on CUDA, SDPA on CPU
    pack_multiple: int = Field(256, ge=1)  # packed rows are padded to a multiple of this (few shapes to compile)
    # Stream the training split from shards (`voicepipe.train.stream.write_shards`): a local folder or s3:// URL.
    # The corpus dir then supplies the validation split and the speaker clips. Needs pack and step_tokens.
    shards: str | None = None
    prefetch: int = Field(4, ge=0)  # optimizer steps collated (and pinned) ahead by a background thread; 0 = inline
    warmup_steps: int = 0
    # Warm-up and decay measured in talker tokens (a long epoch's schedule does not depend on how steps are cut);
    # when set (or with step_tokens), the schedule runs on tokens seen, over all epochs' tokens.
    warmup_tokens: int = Field(0, ge=0)
    scheduler: Literal["constant", "cosine", "linear"] = "constant"
    subtalker_weight: float = 0.3  # official recipe: loss = talker + 0.3 * code predictor
    seed: int = 1234

    # numerics / hardware
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    fused_optimizer: bool = True  # fused AdamW on CUDA
    # torch.compile each decoder layer (dynamic shapes): fuses the many small kernels that make a 1.7B step
    # launch-bound at v8's batch sizes. First steps pay the compile time.
    compile: bool = False
    # Several processes: "ddp" keeps a full model copy per process; "fsdp" (PyTorch FSDP2 `fully_shard`, each decoder
    # layer + root) shards weights, gradients and optimizer state across processes for memory. One process: no-op.
    distributed: Literal["ddp", "fsdp"] = "ddp"

    # speaker identity
    speaker_source: Literal["ref_audio", "audio"] = "ref_audio"  # clips averaged (fp32) into the speaker vector
    speaker_max_clips: int = 64

    # guardrails
    val_every_epoch: bool = True
    # Also validate every N optimizer steps (long epochs); the guards (non-finite, collapse, val rising) then fire
    # at that step instead of waiting for the epoch's end. 0 = at epoch ends only.
    val_every_steps: int = Field(0, ge=0)
    patience: int = Field(3, ge=1)  # stop when val loss has risen this many epochs in a row
    collapse_ratio: float | None = 0.5  # stop when train loss < ratio * val loss (the v5 failure); None = off
    divergence_factor: float | None = 4.0  # stop when smoothed loss > factor * first loss; None = off
    keep_best: int = Field(3, ge=1)  # epoch checkpoints kept on disk, ranked by val loss
    save_state: bool = True  # resumable state (weights, optimizer, scheduler, RNG) at each epoch end
    state_every_steps: int = 0  # also save resumable training state every N optimizer steps (0 = per epoch)
    log_every_steps: int = 1
    # Python's automatic garbage collector off during the epochs, a collection every N optimizer steps instead
    # (Megatron-LM's `--manual-gc`: collections at known steps, aligned across ranks); 0 = automatic. On one H200
    # it did not remove the one slow step in ~16 of podcast.yaml (benchmarks/RESULTS.md), so it is off there.
    gc_every_steps: int = Field(0, ge=0)

    # test hooks (also handy for smoke runs)
    max_steps: int | None = None  # stop after this many optimizer steps in total
    export: bool = True  # write per-epoch model checkpoints

    @property
    def row_multiple(self) -> int:
        """What packed rows are padded to a multiple of: with `compile`, the whole row (`micro_batch_tokens`), so
        every row has one shape (inductor specialises fusion and indexing on the first rows' sizes, and a step's
        partly filled last row then recompiled the layers: 6 recompiles, 47 s, on the H200); else `pack_multiple`."""
        if self.compile and self.pack and self.micro_batch_tokens:
            return int(self.micro_batch_tokens)
        return self.pack_multiple

    @property
    def frame_floor(self) -> int:
        """Fewest frames the code predictor runs on per micro-batch (`compute_loss`): with `compile` and `pack`, 512,
        so a nearly empty last row never crosses the `frames >= 320` guard inductor put on the predictor's layers
        (H200, 12,288-token rows: that recompile made step 14 take 4.0 s against 1.9 s; 34.6% MFU on steps 9-13,
        29.3% with step 14); else 0."""
        return 512 if self.compile and self.pack else 0

    @model_validator(mode="after")
    def _packing(self) -> TrainConfig:
        if self.step_tokens and not self.pack:
            raise ValueError("step_tokens needs pack: true (token-budget steps are packed)")
        if self.shards and not self.step_tokens:
            raise ValueError("shards (streaming) needs pack: true and step_tokens")
        if self.pack and not self.micro_batch_tokens:
            raise ValueError("pack: true needs micro_batch_tokens (the length of a packed row)")
        return self

    @model_validator(mode="after")
    def _fsdp_limits(self) -> TrainConfig:
        if self.distributed == "fsdp" and (self.save_state or self.state_every_steps):
            raise ValueError("distributed=fsdp: resumable training state is DDP-only for now; set save_state: false")
        if self.distributed == "fsdp" and self.method == "lora":
            raise ValueError("distributed=fsdp: LoRA runs are small; use distributed: ddp")
        return self


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (a path, or a name in voicepipe/train/configs; default `v8`) and apply overrides."""
    if path is None:
        path = CONFIG_DIR / "v8.yaml"
    p = Path(path)
    if not p.exists() and (CONFIG_DIR / f"{path}.yaml").exists():
        p = CONFIG_DIR / f"{path}.yaml"
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"training config {path}: not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"training config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path}: expected a mapping, got {type(data).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise ConfigError(f"training config {path}: {where}: {err['msg']}") from None
