"""A sharded corpus streams the same optimizer steps from S3 (moto) as from a local folder, each utterance once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voicepipe.errors import InputError
from voicepipe.train.data import SpecialIds, build_sequence, tokenize_text
from voicepipe.train.stream import INDEX, SHARD_DIR, ShardStream, open_source, write_shards


@pytest.fixture(scope="module")
def make_seq(tiny_tts_dir: Path):
    from voicepipe.models import load_tts

    tts = load_tts(tiny_tts_dir)
    ids = SpecialIds.from_config(tts.model.config)
    return lambda u: build_sequence(tokenize_text(tts.processor, u.text), u.codes, ids)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(31):
        frames = int(torch.randint(3, 25, (1,), generator=g))
        codes = torch.randint(0, 2048, (frames, 16), generator=g).tolist()
        rows.append(dict(audio=f"clips/{i}.wav", text=f"utterance {i} says something", audio_codes=codes))
    (root / "train_with_codes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_shards(root, lines_per_shard=7)
    return root


def _texts(steps) -> list:
    """Steps as nested lists (step, rank, micro-batch) of each sequence's codes (its identity and content)."""
    return [[[[s.codec_ids[:, 3].tolist() for s in mb] for mb in r] for r in step] for step in steps]


def _stream(source, make_seq, epoch: int = 0, world: int = 2) -> ShardStream:
    return ShardStream(source, make_seq, epoch=epoch, seed=5, world=world, micro_batch_tokens=256, step_tokens=600,
                       window=2, prefetch=2)  # fmt: skip


def test_shards_and_index(sharded: Path) -> None:
    idx = json.loads((sharded / SHARD_DIR / INDEX).read_text())
    assert [s["lines"] for s in idx["shards"]] == [7, 7, 7, 7, 3]
    lines = "".join((sharded / SHARD_DIR / s["name"]).read_text() for s in idx["shards"])
    assert lines == (sharded / "train_with_codes.jsonl").read_text()


def test_local_epoch_covers_every_utterance_once_in_token_budget_steps(sharded: Path, make_seq) -> None:
    st = _stream(open_source(sharded), make_seq)
    steps = list(st)
    seqs = [s for step in steps for r in step for mb in r for s in mb]
    assert len(seqs) == st.n_utterances == 31
    assert len({tuple(s.codec_ids[:, 3].tolist()) for s in seqs}) == 31
    for step in steps[:-1]:
        assert len(step) == 2
        assert sum(s.length for r in step for mb in r for s in mb) <= 600
        assert all(sum(s.length for s in mb) <= 256 for r in step for mb in r)
    assert st.wait_s >= 0
    assert _texts(list(_stream(open_source(sharded), make_seq))) == _texts(steps)  # deterministic
    assert _texts(list(_stream(open_source(sharded), make_seq, epoch=1))) != _texts(steps)  # reshuffled per epoch


def test_s3_streams_the_same_steps_as_local(sharded: Path, make_seq, s3_server, tmp_path: Path) -> None:
    from tests.fixtures.store import raw_s3_client, s3_settings_for

    client = raw_s3_client(s3_server)
    bucket = "voicepipe-stream-test"
    client.create_bucket(Bucket=bucket)
    for p in (sharded / SHARD_DIR).iterdir():
        client.upload_file(str(p), bucket, f"corpora/pod/{SHARD_DIR}/{p.name}")
    settings = s3_settings_for(s3_server, f"s3://{bucket}/store", tmp_path)
    remote = open_source(f"s3://{bucket}/corpora/pod", settings)
    local = _stream(open_source(sharded), make_seq, epoch=3)
    assert _texts(list(_stream(remote, make_seq, epoch=3))) == _texts(list(local))
    with pytest.raises(InputError, match="cannot read"):
        remote.read("train_with_codes-00099.jsonl")


def test_bad_shard_line_names_the_shard(sharded: Path, make_seq, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sharded / SHARD_DIR, broken)
    (broken / "train_with_codes-00002.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(InputError, match=r"shard train_with_codes-00002.jsonl:1: missing 'audio_codes'"):
        list(ShardStream(open_source(broken), make_seq, epoch=0, seed=1, world=1, micro_batch_tokens=256,
                         step_tokens=600))  # fmt: skip


def test_training_streams_from_s3_like_from_local(structured_corpus_dir: Path, tiny_tts_dir: Path, s3_server,
                                                  tmp_path: Path) -> None:  # fmt: skip
    """The trainer with `shards:` (local folder, then the same shards on S3) takes the same steps, same losses."""
    import shutil

    from tests.fixtures.store import raw_s3_client, s3_settings_for
    from voicepipe.train import load_config, train

    corpus = tmp_path / "corpus"
    shutil.copytree(structured_corpus_dir, corpus)
    shards = write_shards(corpus, lines_per_shard=2)
    client = raw_s3_client(s3_server)
    client.create_bucket(Bucket="voicepipe-stream-train")
    for p in shards.iterdir():
        client.upload_file(str(p), "voicepipe-stream-train", f"pod/{SHARD_DIR}/{p.name}")
    settings = s3_settings_for(s3_server, "s3://voicepipe-stream-train/store", tmp_path / "home")
    common = dict(epochs=2, lr=1e-3, pack=True, micro_batch_tokens=4096, step_tokens=150, export=False,
                  save_state=False, collapse_ratio=None, divergence_factor=None)  # fmt: skip
    runs = {}
    for name, where in (("local", str(shards)), ("s3", "s3://voicepipe-stream-train/pod")):
        r = train(corpus, tiny_tts_dir, "tester", tmp_path / name, load_config("v8", **common, shards=where),
                  settings=settings, progress=False)  # fmt: skip
        assert r.status == "completed", r.stop_reason
        runs[name] = json.loads(r.training_json.read_text())
    local, s3 = runs["local"], runs["s3"]
    assert len(local["steps"]) >= 4  # several token-budget steps per epoch, two epochs
    assert [(s["step"], s["tokens"], round(s["loss"], 5)) for s in local["steps"]] == [
        (s["step"], s["tokens"], round(s["loss"], 5)) for s in s3["steps"]]
    end_of_epoch_1 = [s["tokens"] for s in local["steps"] if s["epoch"] == 1][-1]
    assert local["steps"][-1]["tokens"] == 2 * end_of_epoch_1  # every utterance once per epoch
    assert [e["val_loss"] for e in local["epochs"]] == pytest.approx([e["val_loss"] for e in s3["epochs"]], rel=1e-5)
