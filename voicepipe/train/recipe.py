"""The fine-tuning recipe: one function, `train`, that reads top to bottom (torchtune style; config in YAML).

    inputs (validated) -> processes/precision -> model -> speaker vector -> sequences -> optimizer -> [resume]
    -> epochs of steps (guardrails per step) -> val loss, checkpoint, guardrails per epoch -> training.json, store

Steps come from a plan over the in-memory corpus (v8's utterance counts, or token budgets with `pack`) or stream from
shards (`shards:`, stream.py); a thread collates each step's micro-batches ahead of the GPU (packing.Prefetcher).

The same code runs on CPU, one GPU, or several processes launched by `accelerate launch` / `torchrun`: DDP, or
with `distributed: fsdp` PyTorch FSDP2 (`fully_shard` on each decoder layer + root) to shard the memory.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from voicepipe.errors import InputError
from voicepipe.train.config import TrainConfig, load_config
from voicepipe.train.data import (
    IGNORE,
    TRAIN_FILE,
    VAL_FILE,
    Sequence,
    SpecialIds,
    build_sequence,
    collate,
    plan_epoch,
    read_base_config,
    read_split,
    tokenize_text,
)
from voicepipe.train.loss import compute_loss

STATE_DIR = "state"  # resumable training state (accelerate save_state + trainer.json)


@dataclass
class TrainResult:
    """What a run produced (also written to `<out>/training.json`)."""

    out_dir: Path
    status: str  # "completed" | "stopped"
    stop_reason: str | None
    epochs: list[dict[str, Any]]
    best: list[dict[str, Any]]  # kept checkpoints, best val loss first
    training_json: Path
    store: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int = 0  # optimizer steps already done when this process started (0 = fresh run)
    model: Any = None  # the trained network (unwrapped), only with train(..., keep_model=True)


class _LossModule(torch.nn.Module):
    """Puts the loss inside `forward`, so DDP's gradient hooks (or FSDP's) and autocast wrap all of it."""

    def __init__(self, model: torch.nn.Module, packed_backend: str = "sdpa", frame_floor: int = 0) -> None:
        super().__init__()
        self.model = model
        self.packed_backend = packed_backend  # per-document attention kernel for packed batches
        self.frame_floor = frame_floor  # `TrainConfig.frame_floor`

    def forward(self, batch: Any, speaker: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = compute_loss(self.model, batch, speaker, self.packed_backend, self.frame_floor)
        return p.talker_sum, p.sub_sum, p.talker_correct, p.sub_correct


# ------------------------------------------------------------------------------------------------------------------


def _restores_gc(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """`TrainConfig.gc_every_steps` switches Python's automatic garbage collector off for the epochs: whatever
    happens, it is back on (and the frozen objects unfrozen) when `train` returns or raises."""

    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> TrainResult:
        was = gc.isenabled()
        try:
            return fn(*args, **kwargs)
        finally:
            if was and not gc.isenabled():
                gc.unfreeze()
                gc.enable()

    return inner


@_restores_gc
def train(
    corpus: str | Path,
    base: str | Path,
    speaker: str,
    out_dir: str | Path,
    config: TrainConfig | str | Path | None = None,
    *,
    settings: Any = None,
    store: Any = None,
    resume: bool = True,
    progress: bool = True,
    keep_model: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune `base` on the corpus for `speaker`; write `<out>/epoch-NNN/`, `training.json`, `loss.png`.

    `corpus`: a corpus dir, `s3://bucket/prefix`, or `store:<sha-or-ref>`. `base`: a local Qwen3-TTS Base model dir
    (or a name `voicepipe.models.resolve_model` knows). `store`: an ArtifactStore, URL or Settings to upload the kept
    checkpoints and training.json to (None = no upload). With `resume`, a run killed in the same `out_dir` continues
    from its last saved training state. `on_progress` is called after every optimizer step with
    `{step, total_steps, epoch, epochs, loss}` (on the main process).
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config)
    out = Path(out_dir)
    started = time.time()

    # 1. inputs --------------------------------------------------------------------------------------------------
    corpus_dir = _resolve_corpus(corpus, settings, out)
    base_dir = _resolve_base(base, settings)
    base_cfg = read_base_config(base_dir)
    talker_cfg = base_cfg["talker_config"]
    groups = int(talker_cfg.get("num_code_groups", 16))
    codebook = int(talker_cfg.get("code_predictor_config", {}).get("vocab_size", 2048))
    need_ref = cfg.speaker_source == "ref_audio"
    stream = None
    if cfg.shards:  # the training split streams from shards; the corpus dir gives val + clips (stream.py)
        from voicepipe.train.stream import open_source, parse_shard, read_index

        source = open_source(cfg.shards, settings)
        first = read_index(source)["shards"][0]["name"]
        train_utts = parse_shard(source.read(first), first, num_groups=groups, codebook_size=codebook, root=corpus_dir)
        stream = dict(source=source, num_groups=groups, codebook_size=codebook)
    else:
        train_utts = read_split(corpus_dir, TRAIN_FILE, num_groups=groups, codebook_size=codebook, need_ref=need_ref)
    val_utts = read_split(corpus_dir, VAL_FILE, num_groups=groups, codebook_size=codebook, need_ref=False)
    speaker_name = _check_speaker(speaker)
    clips = _speaker_clips(train_utts, cfg)
    corpus_version = _corpus_version(corpus_dir)
    language = _corpus_language(corpus_dir, talker_cfg)
    base_sha = _weights_sha256(base_dir)

    # 2. processes and precision -----------------------------------------------------------------------------------
    accelerator = _accelerator(cfg, settings)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process

    # 3. model ---------------------------------------------------------------------------------------------------------
    from voicepipe.models import load_tts, save_tts_checkpoint

    tts = load_tts(base_dir, device=device, dtype=torch.float32, attn_implementation=cfg.attn_implementation)
    model = tts.model
    model.speaker_encoder.requires_grad_(False)  # used once, below; not trained (dropped at export)
    ids = SpecialIds.from_config(model.config)

    # 4. speaker vector: fp32 mean over the corpus's clips -----------------------------------------------------------
    from voicepipe.train.speaker import speaker_centroid

    speaker_vec = speaker_centroid(model, clips).to(device)

    # 5. sequences (same layout as generate(); see data.py) ----------------------------------------------------------
    train_seqs = [_sequence(tts.processor, u, ids, language) for u in train_utts]
    val_seqs = [_sequence(tts.processor, u, ids, language) for u in val_utts]
    lengths = [s.length for s in train_seqs]
    if stream is not None:  # streamed: `lengths` is the first shard's; scale it to the whole index (schedule)
        from voicepipe.train.stream import ShardStream

        stream = ShardStream(**stream, make_seq=lambda u: _sequence(tts.processor, u, ids, language),
                             epoch=0, seed=cfg.seed,
                             world=world, micro_batch_tokens=int(cfg.micro_batch_tokens or 0),
                             step_tokens=int(cfg.step_tokens or 0))  # fmt: skip
        lengths = lengths * max(1, round(stream.n_utterances / len(lengths)))

    # 6. trainable parameters, optimizer, schedule ---------------------------------------------------------------------
    packed_backend = "sdpa"
    if cfg.pack:  # several utterances per row, each attending only to itself (packing.py)
        from voicepipe.train.packing import check_fits, enable_packed_attention, resolve_backend

        if stream is None:
            check_fits(lengths, int(cfg.micro_batch_tokens or 0))
        enable_packed_attention(model)
        packed_backend = resolve_backend(cfg.packed_attention, device)
    if cfg.compile:
        for layer in [*model.talker.model.layers, *model.talker.code_predictor.model.layers]:
            layer.compile(dynamic=True)
    if cfg.method == "lora":
        model = _wrap_lora(model, cfg)
    per_step = cfg.batch_size * cfg.grad_accum
    plan_kw = dict(seed=cfg.seed, per_step=per_step, batch_size=cfg.batch_size, world=world,
                   micro_batch_tokens=cfg.micro_batch_tokens)  # fmt: skip
    steps_per_epoch = len(_plan(cfg, lengths, 0, world, plan_kw))
    total_steps = steps_per_epoch * cfg.epochs
    fsdp = cfg.distributed == "fsdp" and world > 1
    loss_module = _LossModule(model, packed_backend, cfg.frame_floor)
    wrapped = _fully_shard(loss_module, accelerator) if fsdp else loss_module  # before the optimizer
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=bool(cfg.fused_optimizer and device.type == "cuda"))  # fmt: skip
    seen = {"tokens": 0}  # token-based schedule: tokens through the current step (set by the loop)
    factor = _schedule(cfg, total_steps, seen, sum(lengths) * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if fsdp:  # already sharded: accelerate's DDP wrapper would sync gradients a second time
        optimizer = accelerator.prepare(optimizer)
    else:
        wrapped, optimizer = accelerator.prepare(wrapped, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped once per optimizer step, by us

    # 7. resume ------------------------------------------------------------------------------------------------------
    fingerprint = _fingerprint(cfg, corpus_version, base_sha, speaker_name, world)
    ts = _TrainerState(fingerprint=fingerprint)
    state_dir = out / STATE_DIR
    old = state_dir.with_name(state_dir.name + ".old")
    if resume and main and not (state_dir / "trainer.json").exists() and (old / "trainer.json").exists():
        old.rename(state_dir)  # killed between the two renames of _save_state
    accelerator.wait_for_everyone()
    if resume and (state_dir / "trainer.json").exists():
        ts = _TrainerState.load(state_dir / "trainer.json")
        if ts.fingerprint != fingerprint:
            raise InputError(
                f"out dir {out}: holds a run with another config/corpus/base/speaker; use a new --out or --no-resume"
            )
        accelerator.load_state(str(state_dir))
    elif main and state_dir.exists():
        shutil.rmtree(state_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)

    run_info = dict(
        speaker=speaker_name, corpus=str(corpus), corpus_dir=str(corpus_dir), corpus_version=corpus_version,
        language=language,
        base_model=str(base_dir), base_sha256=base_sha, n_train=len(train_seqs), n_val=len(val_seqs),
        world_size=world, device=str(device), precision=accelerator.mixed_precision,
        started=datetime.fromtimestamp(started, UTC).isoformat(), resumed_from_step=ts.global_step,
    )  # fmt: skip
    resumed_from = ts.global_step

    # 8. epochs ------------------------------------------------------------------------------------------------------
    bar = _progress(total_steps, ts.global_step, enabled=progress and main)
    if cfg.gc_every_steps:  # collections at known steps, not inside whichever step crossed the allocation count
        gc.collect()
        gc.freeze()  # the model, corpus and optimizer objects: never scanned again
        gc.disable()
    stop_reason: str | None = ts.stop_reason
    for epoch in range(ts.epoch, cfg.epochs):
        if stop_reason:
            break
        wrapped.train()
        t_epoch = time.time()
        n_steps = None if stream else len(_plan(cfg, lengths, epoch, world, plan_kw))
        steps = _epoch_steps(cfg, epoch, world, plan_kw, lengths, train_seqs, stream)
        # this process's micro-batches collated (and pinned) ahead by a thread; done steps (resume) are skipped
        batches = _feed(steps, rank, ts.step_in_epoch, cfg, device)
        s = ts.step_in_epoch - 1
        finished_epoch = False
        while True:
            try:
                step_plan, mine = batches.next()
            except StopIteration:
                finished_epoch = True
                break
            s += 1
            # A short last step can leave a process with fewer (or no) micro-batches: it runs zero-weight ones, so
            # that DDP syncs (at least one) and FSDP's all-gathers, which are collective, line up (as many as any).
            n_micro = max(len(r) for r in step_plan) if fsdp else max(1, len(mine))
            everyone = [q for r in step_plan for mb in r for q in mb]  # the step's Sequences, all processes
            n0 = sum(int((q.labels != IGNORE).sum()) for q in everyone)
            nsub = sum(q.n_frames for q in everyone) * (groups - 1)
            sums = torch.zeros(4, device=device, dtype=torch.float64)
            for k in range(n_micro):
                if k < len(mine):
                    batch, weight = mine[k].to(device), 1.0
                else:
                    batch, weight = collate([step_plan[0][0][0]]).to(device), 0.0
                sync = k == n_micro - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(wrapped):
                    t_sum, s_sum, t_ok, s_ok = wrapped(batch, speaker_vec)
                    # token mean over the WHOLE optimizer step (all micro-batches, all processes); DDP averages
                    # (and FSDP) average gradients over processes, hence the factor `world`.
                    loss = weight * world * (t_sum / n0 + cfg.subtalker_weight * s_sum / nsub)
                    accelerator.backward(loss)
                sums += weight * torch.stack([t_sum.detach().double(), s_sum.detach().double(), t_ok.double(),
                                              s_ok.double()])
            grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
            step_tok = sum(q.length for q in everyone)
            if cfg.warmup_tokens or cfg.step_tokens:  # token schedule: this step's LR from tokens through it
                seen["tokens"] = ts.tokens + step_tok
                for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
                    group["lr"] = base_lr * scheduler.lr_lambdas[0](0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            sums = accelerator.reduce(sums, reduction="sum")
            ts.add_step(sums.tolist(), n0, nsub, cfg.subtalker_weight)
            ts.tokens += step_tok
            ts.global_step += 1
            ts.step_in_epoch = s + 1
            step_loss = ts.epoch_acc_loss_last
            gn = float(_full(grad_norm)) if grad_norm is not None else float("nan")
            if ts.global_step % cfg.log_every_steps == 0 or not math.isfinite(step_loss):
                ts.steps.append(dict(step=ts.global_step, epoch=epoch + 1, loss=step_loss, grad_norm=gn,
                                     lr=scheduler.get_last_lr()[0], tokens=ts.tokens,
                                     t=round(time.time() - t_epoch, 3), data_wait_s=round(batches.wait_s, 4)))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.4f}", gnorm=f"{gn:.2f}")
            if on_progress is not None and main:  # e.g. a Prefect progress artifact (tasks/train.py)
                on_progress({"step": ts.global_step, "total_steps": total_steps, "epoch": epoch + 1,
                             "epochs": cfg.epochs, "loss": step_loss})
            stop_reason = ts.step_guard(step_loss, cfg)
            if cfg.gc_every_steps and ts.global_step % cfg.gc_every_steps == 0:
                gc.collect()
            if not stop_reason and cfg.val_every_steps and ts.global_step % cfg.val_every_steps == 0:
                val = _evaluate(wrapped, val_seqs, speaker_vec, accelerator, cfg, groups, same_count=fsdp)
                stop_reason = ts.val_guard(val, cfg)
                wrapped.train()
            if stop_reason or (cfg.max_steps and ts.global_step >= cfg.max_steps):
                break
            if cfg.state_every_steps and ts.global_step % cfg.state_every_steps == 0 and s + 1 != n_steps:
                _save_state(accelerator, ts, state_dir, cfg.save_state)
        finished_epoch = finished_epoch or ts.step_in_epoch == n_steps
        batches.close()
        ts.data_wait_s += batches.wait_s
        if stop_reason in ("nonfinite_loss", "diverged", "train_collapse", "val_loss_rising"):
            _write_report(out, ts, cfg, run_info, "stopped", stop_reason) if main else None
            break
        if not finished_epoch:  # max_steps reached mid-epoch: record and stop without an epoch checkpoint
            _save_state(accelerator, ts, state_dir, cfg.save_state)
            break

        # epoch end: validation, checkpoint, guardrails, resumable state
        val = _evaluate(wrapped, val_seqs, speaker_vec, accelerator, cfg, groups, same_count=fsdp)
        rec = ts.close_epoch(epoch + 1, val, seconds=time.time() - t_epoch, w=cfg.subtalker_weight)
        rec["data_wait_s"], ts.data_wait_s = round(ts.data_wait_s, 3), 0.0  # time the step waited for batches
        if cfg.export:
            # FSDP: every process takes part in gathering the full weights; rank 0 gets them (on CPU)
            net = _full_model(wrapped) if fsdp else accelerator.unwrap_model(wrapped).model
            if main:
                ckpt = out / f"epoch-{epoch + 1:03d}"
                net = _export_model(net, cfg, _base_dtype(base_cfg))
                save_tts_checkpoint(net, ckpt, base_dir=base_dir, speaker=speaker_name,
                                    speaker_embedding=speaker_vec.float().cpu(),
                                    meta=dict(language=language, corpus_version=corpus_version,
                                              epoch=epoch + 1))  # fmt: skip
                rec["checkpoint"] = ckpt.name
                ts.keep_best(out, cfg.keep_best)
            del net
        accelerator.wait_for_everyone()
        stop_reason = ts.epoch_guard(cfg)
        ts.epoch, ts.step_in_epoch, ts.stop_reason = epoch + 1, 0, stop_reason
        _save_state(accelerator, ts, state_dir, cfg.save_state)
        if main:
            _write_report(out, ts, cfg, run_info, "running", None)
        if cfg.max_steps and ts.global_step >= cfg.max_steps:
            break
    bar.close()
    if cfg.pack:
        from voicepipe.train.packing import disable_packed_attention

        disable_packed_attention(model)

    # 9. report and store --------------------------------------------------------------------------------------------
    status = "stopped" if stop_reason else "completed"
    run_info["finished"] = datetime.now(UTC).isoformat()
    run_info["seconds"] = round(time.time() - started, 2)
    result_store: dict[str, Any] = {}
    if main:
        _write_report(out, ts, cfg, run_info, status, stop_reason)
        if store is not None:
            result_store = _upload(store, out, ts, speaker_name, cfg, run_info)
            _write_report(out, ts, cfg, {**run_info, "store": result_store}, status, stop_reason)
    accelerator.wait_for_everyone()
    net = None
    if keep_model:
        net = _full_model(wrapped, every_rank=True) if fsdp else accelerator.unwrap_model(wrapped).model
    accelerator.end_training()
    return TrainResult(out_dir=out, status=status, stop_reason=stop_reason, epochs=ts.epochs, best=ts.best,
                       training_json=out / "training.json", store=result_store, resumed_from_step=resumed_from,
                       model=net)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# helpers, in the order the recipe uses them


def _resolve_corpus(corpus: str | Path, settings: Any, out: Path) -> Path:
    text = str(corpus)
    if text.startswith("s3://"):
        return _download_s3_prefix(text, settings, out / "corpus")
    if text.startswith("store:"):
        from voicepipe.store import open_store

        st = open_store(settings)
        sha = st.resolve(text[len("store:") :])  # a ref, a sha256 or a unique prefix of one
        return st.get_dir(sha, out / "corpus", overwrite=True)
    p = Path(corpus)
    if not p.is_dir():
        raise InputError(f"corpus {corpus}: not a directory")
    return p


def _download_s3_prefix(url: str, settings: Any, dest: Path) -> Path:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from voicepipe.config import load_settings

    s = settings or load_settings()
    bucket, _, prefix = url[len("s3://") :].partition("/")
    secret = s.s3_secret_key.get_secret_value() if s.s3_secret_key else None
    client = boto3.client("s3", endpoint_url=s.s3_endpoint_url, aws_access_key_id=s.s3_access_key,
                          aws_secret_access_key=secret, region_name=s.s3_region,
                          config=Config(s3={"addressing_style": "path"}) if s.s3_endpoint_url else None)  # fmt: skip
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    n = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))
                n += 1
    except (BotoCoreError, ClientError) as e:
        raise InputError(f"corpus {url}: cannot read ({e})") from None
    if n == 0:
        raise InputError(f"corpus {url}: no objects under that prefix")
    return dest


def _resolve_base(base: str | Path, settings: Any) -> Path:
    if Path(base).exists():
        return Path(base)
    from voicepipe.models import resolve_model

    where = resolve_model("tts", str(base), settings)
    if not isinstance(where, Path):
        raise InputError(f"base model {base}: fine-tuning needs a local model directory (got hub id {where})")
    return where


def _check_speaker(speaker: str) -> str:
    name = str(speaker or "").strip().lower()
    if not name or any(c.isspace() and c != " " for c in name) or len(name) > 64:
        raise InputError(f"speaker {speaker!r}: needs a one-line name of at most 64 characters")
    return name


def _speaker_clips(utts: list[Any], cfg: TrainConfig) -> list[Path]:
    attr = "ref_audio" if cfg.speaker_source == "ref_audio" else "audio"
    clips = list(dict.fromkeys(getattr(u, attr) for u in utts if getattr(u, attr) is not None))
    if not clips:
        raise InputError(f"corpus: no '{attr}' clips to compute the speaker vector from")
    missing = [c for c in clips if not Path(c).exists()]
    if missing:
        raise InputError(f"corpus: speaker clip {missing[0]} not found")
    return clips[: cfg.speaker_max_clips]


def _corpus_version(corpus_dir: Path) -> str:
    meta = corpus_dir / "corpus.json"
    if meta.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            v = json.loads(meta.read_text()).get("version")
            if v:
                return str(v)
    h = hashlib.sha256()
    for name in (TRAIN_FILE, VAL_FILE):
        h.update((corpus_dir / name).read_bytes())
    return "sha256:" + h.hexdigest()


def _weights_sha256(base_dir: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(base_dir).glob("*.safetensors")):
        with p.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _accelerator(cfg: TrainConfig, settings: Any) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    want = (getattr(settings, "device", None) or os.environ.get("VOICEPIPE_DEVICE") or "auto").lower()
    cpu = want == "cpu" or not torch.cuda.is_available()
    precision = cfg.precision
    if precision == "auto":
        precision = "fp32" if cpu else "bf16"
    # broadcast_buffers off: the only buffers are constant RoPE tables, and processes may run different
    # numbers of micro-batches per step.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return Accelerator(cpu=cpu, mixed_precision="bf16" if precision == "bf16" else "no", kwargs_handlers=[ddp])


def _fully_shard(module: _LossModule, accelerator: Any) -> _LossModule:
    """FSDP2: shard each decoder layer (talker, code predictor) and the rest (root) over all processes.

    Weights, gradients and AdamW state are then 1/world per process; a layer's full weights exist only during its
    forward/backward. bf16 runs autocast the forward, like accelerate does for a DDP model.
    """
    from torch.distributed.fsdp import fully_shard

    net = module.model
    for layer in [*net.talker.model.layers, *net.talker.code_predictor.model.layers]:
        fully_shard(layer)
    fully_shard(module)
    if accelerator.mixed_precision == "bf16":
        module.forward = torch.autocast(accelerator.device.type, dtype=torch.bfloat16)(module.forward)
    return module


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP's sharded values, e.g. the gradient norm); others unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _full_model(module: _LossModule, every_rank: bool = False) -> torch.nn.Module | None:
    """FSDP: the network as one plain module with full weights, on rank 0 on CPU (or on every rank); else None.

    A collective: every process must call it. A fresh meta-device instance of the same class takes the gathered
    tensors (see `_export_model`), so the sharded training module is untouched.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=not every_rank)
    state = {k.removeprefix("model."): v for k, v in get_model_state_dict(module, options=opts).items()}
    if not state:
        return None
    with torch.device("meta"):
        fresh = type(module.model)(module.model.config)
    fresh.load_state_dict(state, strict=True, assign=True)
    return fresh


def _corpus_language(corpus_dir: Path, talker_cfg: dict[str, Any]) -> str:
    """The corpus's language (the prompt is laid out with its tag), checked against the base model's languages."""
    from voicepipe.models.prompt import AUTO, corpus_language

    lang = corpus_language(corpus_dir)
    known = talker_cfg.get("codec_language_id") or {}
    if lang != AUTO and lang not in known:
        raise InputError(f"corpus {corpus_dir}: language {lang!r} is not one the base model knows "
                         f"({', '.join([AUTO, *sorted(known)])})")
    return lang


def _sequence(processor: Any, utt: Any, ids: SpecialIds, language: str) -> Sequence:
    try:
        return build_sequence(tokenize_text(processor, utt.text), utt.codes, ids, language=language)
    except InputError as e:
        raise InputError(f"corpus line {utt.line}: {e}") from None


def _wrap_lora(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    names = "|".join(cfg.lora.target_modules)
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=rf"talker\..*\.({names})")  # fmt: skip
    return get_peft_model(model, lcfg)


def _export_model(model: torch.nn.Module, cfg: TrainConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The network to save, in the base checkpoint's dtype, with LoRA adapters merged into full weights.

    Training state is never touched: merged weights are W + the adapter's delta (peft's `get_delta_weight`), and a
    re-typed or merged model is a fresh meta-device instance of the same class given those tensors (`deepcopy`
    fails on this model: its config holds `dict_keys`).
    """
    if cfg.method != "lora" and next(model.parameters()).dtype == dtype:
        return model
    if cfg.method == "lora":
        net = model.get_base_model()
        state: dict[str, torch.Tensor] = {}
        lora_layers = {name: m for name, m in net.named_modules() if hasattr(m, "get_delta_weight")}
        for key, value in net.state_dict().items():
            if "lora_" in key:
                continue
            owner, _, leaf = key.rpartition(".")
            if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in lora_layers:
                layer = lora_layers[owner[: -len(".base_layer")]]
                if leaf == "weight":
                    value = value + layer.get_delta_weight("default").to(value.dtype)
                key = f"{owner[: -len('.base_layer')]}.{leaf}"
            state[key] = value.detach().to(dtype)
    else:
        net = model
        state = {k: v.detach().to(dtype) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        fresh = type(net)(net.config)
    fresh.load_state_dict(state, strict=True, assign=True)
    return fresh


def _base_dtype(base_cfg: dict[str, Any]) -> torch.dtype:
    name = str(base_cfg.get("dtype") or base_cfg.get("torch_dtype") or "float32")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def _schedule(cfg: TrainConfig, total: int, seen: dict[str, int] | None = None, total_tokens: int = 0) -> Any:
    """LR factor per optimizer step; with `warmup_tokens` or `step_tokens`, a function of the tokens trained on
    (`seen["tokens"]`, set by the loop before each `optimizer.step()`), over `total_tokens`."""
    by_tokens = seen is not None and bool(cfg.warmup_tokens or cfg.step_tokens)

    def factor(step: int) -> float:
        if by_tokens:  # tokens through the step about to be taken (the loop sets it before optimizer.step())
            x, warm, end = seen["tokens"], cfg.warmup_tokens, total_tokens
            if warm and x < warm:
                return max(x, 1) / warm
        else:
            x, warm, end = step, cfg.warmup_steps, total
            if warm and x < warm:
                return (x + 1) / warm
        if cfg.scheduler == "constant":
            return 1.0
        frac = min(1.0, (x - warm) / max(1, end - warm))
        return 0.5 * (1 + math.cos(math.pi * frac)) if cfg.scheduler == "cosine" else 1.0 - frac

    return factor


def _plan(cfg: TrainConfig, lengths: list[int], epoch: int, world: int, plan_kw: dict[str, Any]) -> list[Any]:
    """This epoch's steps[s][rank] = micro-batches: packed token-budget plan or the utterance-count plan."""
    if not cfg.pack:
        return plan_epoch(lengths, epoch=epoch, **plan_kw)
    from voicepipe.train.packing import plan_packed_epoch

    per_step = None if cfg.step_tokens else cfg.batch_size * cfg.grad_accum
    return plan_packed_epoch(lengths, epoch=epoch, seed=cfg.seed, world=world,
                             micro_batch_tokens=int(cfg.micro_batch_tokens or 0), step_tokens=cfg.step_tokens,
                             per_step=per_step)  # fmt: skip


def _epoch_steps(cfg: TrainConfig, epoch: int, world: int, plan_kw: dict[str, Any], lengths: list[int],
                 seqs: list[Sequence], stream: Any) -> Iterator[list[list[list[Sequence]]]]:  # fmt: skip
    """This epoch's optimizer steps as steps[rank] = micro-batches of Sequences (in memory, or streamed shards)."""
    if stream is not None:
        stream.epoch = epoch
        yield from stream
        return
    for step in _plan(cfg, lengths, epoch, world, plan_kw):
        yield [[[seqs[i] for i in mb] for mb in r] for r in step]


def _feed(steps: Iterator[Any], rank: int, start: int, cfg: TrainConfig, device: Any) -> Any:
    """(step, this process's collated micro-batches) from step `start` on, made ahead by a thread (`Prefetcher`)."""
    from voicepipe.train.packing import Prefetcher, pack

    pin = getattr(device, "type", str(device)) == "cuda"

    def make(group: list[Sequence]) -> Any:
        b = pack(group, cfg.row_multiple) if cfg.pack else collate(group)
        return b.pin_memory() if pin else b

    work = ((step, [make(mb) for mb in step[rank]]) for step in itertools.islice(steps, start, None))
    return Prefetcher(work, depth=cfg.prefetch)


def _fingerprint(cfg: TrainConfig, corpus_version: str, base_sha: str, speaker: str, world: int) -> str:
    keep = cfg.model_dump(exclude={"max_steps", "epochs", "log_every_steps", "state_every_steps", "prefetch"})
    blob = json.dumps([keep, corpus_version, base_sha, speaker, world], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _progress(total: int, done: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)


@torch.no_grad()
def _evaluate(wrapped: Any, seqs: list[Sequence], speaker: torch.Tensor, accelerator: Any, cfg: TrainConfig,
              groups: int, same_count: bool = False) -> dict[str, float]:  # fmt: skip
    """Teacher-forced loss and code accuracy on the held-out split (token means over all processes).

    `same_count` (FSDP, whose all-gathers are collective): every process runs as many forwards, padding with
    zero-weight batches.
    """
    net = accelerator.unwrap_model(wrapped)
    was_training = net.training
    net.eval()
    mine = sorted(range(accelerator.process_index, len(seqs), accelerator.num_processes), key=lambda i: seqs[i].length)
    bs = cfg.batch_size * cfg.grad_accum
    sums = torch.zeros(6, dtype=torch.float64, device=accelerator.device)
    batches = [mine[k : k + bs] for k in range(0, len(mine), bs)]
    if same_count:
        batches += [[]] * (math.ceil(math.ceil(len(seqs) / accelerator.num_processes) / bs) - len(batches))
    for b in batches:
        w = 1.0 if b else 0.0
        batch = collate([seqs[i] for i in b or [0]])
        n0, nsub = batch.n_labels, batch.n_frames * (groups - 1)
        with accelerator.autocast():
            t_sum, s_sum, t_ok, s_ok = net(batch.to(accelerator.device), speaker)
        sums[:4] += w * torch.stack([t_sum.double(), s_sum.double(), t_ok.double(), s_ok.double()])
        sums[4] += w * n0
        sums[5] += w * nsub
    sums = accelerator.reduce(sums, reduction="sum")
    t_sum, s_sum, t_ok, s_ok, n0, nsub = sums.tolist()
    net.train(was_training)
    talker, sub = t_sum / max(n0, 1), s_sum / max(nsub, 1)
    return dict(val_loss=talker + cfg.subtalker_weight * sub, val_talker_loss=talker, val_sub_loss=sub,
                val_acc0=t_ok / max(n0, 1), val_acc_sub=s_ok / max(nsub, 1))  # fmt: skip


@dataclass
class _TrainerState:
    """Counters, metrics and guardrail memory; saved next to accelerate's state so a killed run resumes exactly."""

    fingerprint: str
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    global_step: int = 0
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    best: list[dict[str, Any]] = field(default_factory=list)
    acc: list[float] = field(default_factory=lambda: [0.0] * 6)  # this epoch: t_sum, s_sum, t_ok, s_ok, n0, nsub
    epoch_acc_loss_last: float = float("nan")
    first_loss: float | None = None
    ema: float | None = None
    stop_reason: str | None = None
    tokens: int = 0  # talker tokens trained on (all processes), for the token-based schedule
    vals: list[dict[str, Any]] = field(default_factory=list)  # validations every `val_every_steps`
    data_wait_s: float = 0.0  # this epoch so far: seconds the loop waited for collated batches
    since_val: list[float] = field(default_factory=lambda: [0.0] * 4)  # t_sum, s_sum, n0, nsub since last val

    def add_step(self, sums: list[float], n0: int, nsub: int, w: float) -> None:
        for i, v in enumerate([*sums, n0, nsub]):
            self.acc[i] += v
        for i, v in enumerate([sums[0], sums[1], n0, nsub]):
            self.since_val[i] += v
        self.epoch_acc_loss_last = sums[0] / max(n0, 1) + w * sums[1] / max(nsub, 1)

    def step_guard(self, loss: float, cfg: TrainConfig) -> str | None:
        if not math.isfinite(loss):
            return "nonfinite_loss"
        if self.first_loss is None:
            self.first_loss = loss
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        if cfg.divergence_factor and self.ema > cfg.divergence_factor * self.first_loss:
            return "diverged"
        return None

    def val_guard(self, val: dict[str, float], cfg: TrainConfig) -> str | None:
        """The epoch guards, at a validation between epoch ends (train loss: token mean since the last validation)."""
        t_sum, s_sum, n0, nsub = self.since_val
        train = t_sum / max(n0, 1) + cfg.subtalker_weight * s_sum / max(nsub, 1) if n0 else float("nan")
        self.since_val = [0.0] * 4
        self.vals.append(dict(step=self.global_step, train_loss=train, **val))
        if not math.isfinite(val["val_loss"]):
            return "nonfinite_loss"
        if cfg.collapse_ratio and train < cfg.collapse_ratio * val["val_loss"]:
            return "train_collapse"
        vals = [v["val_loss"] for v in self.vals]
        if len(vals) > cfg.patience and all(vals[-i] > vals[-i - 1] for i in range(1, cfg.patience + 1)):
            return "val_loss_rising"
        return None

    def close_epoch(self, epoch: int, val: dict[str, float], seconds: float, w: float) -> dict[str, Any]:
        t_sum, s_sum, t_ok, s_ok, n0, nsub = self.acc
        rec: dict[str, Any] = dict(epoch=epoch, step=self.global_step)
        talker, sub = t_sum / max(n0, 1), s_sum / max(nsub, 1)
        rec.update(train_loss=talker + w * sub, train_talker_loss=talker, train_sub_loss=sub,
                   train_acc0=t_ok / max(n0, 1), train_acc_sub=s_ok / max(nsub, 1), **val,
                   seconds=round(seconds, 3))  # fmt: skip
        self.epochs.append(rec)
        self.acc = [0.0] * 6
        return rec

    def keep_best(self, out: Path, k: int) -> None:
        ranked = sorted((e for e in self.epochs if e.get("checkpoint")), key=lambda e: e["val_loss"])
        keep = {e["checkpoint"] for e in ranked[:k]}
        for e in ranked[k:]:
            shutil.rmtree(out / e["checkpoint"], ignore_errors=True)
            e["pruned"] = True
        self.best = [dict(epoch=e["epoch"], val_loss=e["val_loss"], checkpoint=e["checkpoint"]) for e in ranked[:k]]
        for e in self.epochs:
            if e.get("checkpoint") in keep:
                e.pop("pruned", None)

    def epoch_guard(self, cfg: TrainConfig) -> str | None:
        last = self.epochs[-1]
        if not math.isfinite(last["val_loss"]):
            return "nonfinite_loss"
        if cfg.collapse_ratio and last["train_loss"] < cfg.collapse_ratio * last["val_loss"]:
            return "train_collapse"  # the v5 failure: training loss far below validation
        vals = [e["val_loss"] for e in self.epochs]
        if len(vals) > cfg.patience and all(vals[-i] > vals[-i - 1] for i in range(1, cfg.patience + 1)):
            return "val_loss_rising"
        return None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1, default=float))

    @classmethod
    def load(cls, path: Path) -> _TrainerState:
        return cls(**json.loads(path.read_text()))


def _save_state(accelerator: Any, ts: _TrainerState, state_dir: Path, enabled: bool = True) -> None:
    """accelerate's state (model, optimizer, scheduler, RNG) + trainer.json, swapped in atomically."""
    if not enabled:
        return
    tmp = state_dir.with_name(state_dir.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ts.save(tmp / "trainer.json")
        old = state_dir.with_name(state_dir.name + ".old")
        if state_dir.exists():
            if old.exists():  # a run killed while deleting it: state_dir is the newer complete copy
                shutil.rmtree(old)
            state_dir.rename(old)
        tmp.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_report(out: Path, ts: _TrainerState, cfg: TrainConfig, run: dict[str, Any], status: str,
                  stop_reason: str | None) -> Path:  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    doc = dict(run={**run, "status": status, "stop_reason": stop_reason}, config=cfg.model_dump(mode="json"),
               epochs=ts.epochs, best=ts.best, steps=ts.steps, vals=ts.vals)  # fmt: skip
    path = out / "training.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    tmp.replace(path)
    from voicepipe.train.plot import plot_losses

    plot_losses(ts.steps, ts.epochs, out / "loss.png", title=f"{run.get('speaker')} - {status}"
                + (f" ({stop_reason})" if stop_reason else ""))  # fmt: skip
    return path


def _upload(store: Any, out: Path, ts: _TrainerState, speaker: str, cfg: TrainConfig,
            run: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    from voicepipe.store import ArtifactStore, open_store

    st = store if isinstance(store, ArtifactStore) else open_store(store)
    params = dict(speaker=speaker, corpus_version=run["corpus_version"], base_sha256=run["base_sha256"])
    ckpts: dict[str, str] = {}
    for b in ts.best:
        ref = st.put_dir(out / b["checkpoint"], step="train", params={**params, "epoch": b["epoch"],
                         "val_loss": b["val_loss"]}, name=f"{speaker}-{b['checkpoint']}")  # fmt: skip
        ckpts[b["checkpoint"]] = ref.sha256
        b["sha256"] = ref.sha256
    loss_png = st.put_file(out / "loss.png", step="train", params=params, name=f"{speaker}-loss.png")
    tj = st.put_file(out / "training.json", step="train", inputs=list(ckpts.values()), params=params,
                     name=f"{speaker}-training.json")  # fmt: skip
    st.set_ref(f"train/{speaker}/latest", tj.sha256, extra={"checkpoints": ckpts, "loss_png": loss_png.sha256})
    return dict(training_json=tj.sha256, loss_png=loss_png.sha256, checkpoints=ckpts, uri=tj.uri)
