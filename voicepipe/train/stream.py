"""Streaming a sharded corpus from the store (local folder or s3://), with the next shards read ahead by a thread.

A corpus too large to hold as one jsonl in memory is cut into shards (`write_shards`): `shards/<split>-NNNNN.jsonl`
(the corpus' own line format) plus `shards/shards.json` (names, line and frame counts). An epoch reads the shards in a
seeded order, `prefetch` shards ahead in a background thread (download + parse + layout), shuffles the utterances of
each `window` of shards together, and cuts optimizer steps by token budget exactly as `packing.plan_packed_epoch`
does. Everything depends only on (seed, epoch, shard contents), so a local copy and the same shards on S3 give the
same steps (tests/test_train_stream.py), and a resumed run regenerates the steps it skips.

Only `window + prefetch` shards are in memory at a time. `ShardStream.wait_s` is the time the consumer waited for a
shard (the loader's stall).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import torch

from voicepipe.errors import InputError
from voicepipe.train.data import TRAIN_FILE, Sequence, Utterance, read_split
from voicepipe.train.packing import Prefetcher, plan_packed_epoch

SHARD_DIR = "shards"
INDEX = "shards.json"


def write_shards(corpus_dir: str | Path, *, split: str = TRAIN_FILE, lines_per_shard: int = 2000) -> Path:
    """Cut `corpus_dir/split` into `corpus_dir/shards/<stem>-NNNNN.jsonl` + `shards.json`; return the shard dir."""
    src = Path(corpus_dir) / split
    if not src.exists():
        raise InputError(f"corpus {corpus_dir}: {split} is missing")
    out = Path(corpus_dir) / SHARD_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = split.removesuffix(".jsonl")
    shards: list[dict[str, Any]] = []
    buf: list[str] = []
    frames = 0

    def flush() -> None:
        nonlocal buf, frames
        if buf:
            name = f"{stem}-{len(shards):05d}.jsonl"
            (out / name).write_text("".join(buf))
            shards.append(dict(name=name, lines=len(buf), frames=frames))
            buf, frames = [], 0

    with src.open() as f:
        for line in f:
            if not line.strip():
                continue
            buf.append(line if line.endswith("\n") else line + "\n")
            frames += len(json.loads(line).get("audio_codes") or [])
            if len(buf) >= lines_per_shard:
                flush()
    flush()
    (out / INDEX).write_text(json.dumps(dict(split=split, shards=shards), indent=1) + "\n")
    return out


class ShardSource(Protocol):
    def read(self, name: str) -> bytes: ...


class LocalSource:
    """Shards in a local folder (the corpus dir's `shards/`, or the folder itself)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        self.root = root / SHARD_DIR if (root / SHARD_DIR / INDEX).exists() else root
        self.where = str(self.root)

    def read(self, name: str) -> bytes:
        try:
            return (self.root / name).read_bytes()
        except OSError as e:
            raise InputError(f"corpus shards {self.root}: cannot read {name} ({e.strerror})") from None


class S3Source:
    """Shards under `s3://bucket/prefix` (the prefix may be the corpus' or its `shards/`); S3 or MinIO."""

    def __init__(self, url: str, settings: Any = None) -> None:
        import boto3
        from botocore.config import Config

        from voicepipe.config import load_settings

        s = settings or load_settings()
        self.bucket, _, prefix = url[len("s3://") :].partition("/")
        secret = s.s3_secret_key.get_secret_value() if s.s3_secret_key else None
        path_style = Config(s3={"addressing_style": "path"}) if s.s3_endpoint_url else None
        self.client = boto3.client("s3", endpoint_url=s.s3_endpoint_url, aws_access_key_id=s.s3_access_key,
                                   aws_secret_access_key=secret, region_name=s.s3_region, config=path_style)
        prefix = prefix.strip("/")
        self.where = url
        self.prefix = prefix + "/" if prefix else ""
        if not self._exists(self.prefix + INDEX):
            self.prefix = f"{self.prefix}{SHARD_DIR}/"

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError:
            return False

    def read(self, name: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
        except (BotoCoreError, ClientError) as e:
            raise InputError(f"corpus shards {self.where}: cannot read {name} ({e})") from None


def open_source(where: str | Path, settings: Any = None) -> LocalSource | S3Source:
    """A local folder or an `s3://` URL holding `shards.json` and its shards."""
    return S3Source(str(where), settings) if str(where).startswith("s3://") else LocalSource(where)


def read_index(source: ShardSource) -> dict[str, Any]:
    where = getattr(source, "where", "?")
    try:
        idx = json.loads(source.read(INDEX))
    except json.JSONDecodeError as e:
        raise InputError(f"corpus shards {where}: {INDEX} is not valid JSON ({e.msg})") from None
    if not isinstance(idx, dict) or not idx.get("shards"):
        raise InputError(f"corpus shards {where}: {INDEX} lists no shards")
    return idx


def parse_shard(data: bytes, name: str, *, num_groups: int, codebook_size: int,
                root: Path | None = None) -> list[Utterance]:  # fmt: skip
    """One shard's utterances, validated like a corpus split (errors name the shard and line); relative audio paths
    resolve against `root` (the corpus dir)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / name).write_bytes(data)
        try:
            utts = read_split(Path(tmp), name, num_groups=num_groups, codebook_size=codebook_size, need_ref=False)
        except InputError as e:
            raise InputError(str(e).replace(str(Path(tmp) / name), f"shard {name}").replace(tmp, "shards")) from None
    for u in utts:
        for attr in ("audio", "ref_audio"):
            p = getattr(u, attr)
            if p is not None and p.is_relative_to(tmp):
                setattr(u, attr, (Path(root) if root else Path(".")) / p.relative_to(tmp))
    return utts


class ShardStream:
    """One epoch of optimizer steps from a sharded corpus: steps[rank] = micro-batches of `Sequence`s.

    `make_seq(utterance) -> Sequence` lays an utterance out (tokenize + `data.build_sequence`); it runs in the
    prefetch thread. Steps hold `step_tokens` talker tokens (all processes), micro-batches `micro_batch_tokens`.
    """

    def __init__(self, source: ShardSource, make_seq: Callable[[Utterance], Sequence], *, epoch: int, seed: int,
                 world: int, micro_batch_tokens: int, step_tokens: int, window: int = 2, prefetch: int = 2,
                 num_groups: int = 16, codebook_size: int = 2048) -> None:  # fmt: skip
        self.source, self.make_seq = source, make_seq
        self.epoch, self.seed, self.world, self.window, self.prefetch = epoch, seed, world, window, prefetch
        self.micro_batch_tokens, self.step_tokens = micro_batch_tokens, step_tokens
        self.num_groups, self.codebook_size = num_groups, codebook_size
        self.index = read_index(source)
        self.wait_s = 0.0

    @property
    def n_utterances(self) -> int:
        return sum(int(s["lines"]) for s in self.index["shards"])

    def _shards(self) -> Iterator[list[Sequence]]:
        names = [s["name"] for s in self.index["shards"]]
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        for i in order.tolist():
            utts = parse_shard(self.source.read(names[i]), names[i], num_groups=self.num_groups,
                               codebook_size=self.codebook_size)  # fmt: skip
            yield [self.make_seq(u) for u in utts]

    def __iter__(self) -> Iterator[list[list[list[Sequence]]]]:
        n_shards = len(self.index["shards"])
        reader = Prefetcher(self._shards(), depth=self.prefetch)
        pending: list[Sequence] = []
        try:
            for w in range(math.ceil(n_shards / self.window)):
                buf: list[Sequence] = []
                for _ in range(min(self.window, n_shards - w * self.window)):
                    buf += reader.next()
                g = torch.Generator().manual_seed((self.seed * 1000 + self.epoch) * 100_003 + w)
                pending += [buf[i] for i in torch.randperm(len(buf), generator=g).tolist()]
                last = (w + 1) * self.window >= n_shards
                plan = plan_packed_epoch([s.length for s in pending], epoch=0, seed=0, world=self.world,
                                         micro_batch_tokens=self.micro_batch_tokens, step_tokens=self.step_tokens,
                                         shuffle=False)  # fmt: skip
                keep = plan if last else plan[:-1]  # an unfilled last step waits for the next window
                for step in keep:
                    yield [[[pending[i] for i in mb] for mb in r] for r in step]
                used = {i for step in keep for r in step for mb in r for i in mb}
                pending = [s for i, s in enumerate(pending) if i not in used]
        finally:
            self.wait_s += reader.wait_s
            reader.close()
