"""`engine.l2.pack`: the weights an L2 persisting window covers must be adjacent bytes (the window is one range).
The window itself needs CUDA (benchmarks/fused.py --variants '[{"l2": ...}]' and `EngineConfig.l2_persist_mb`)."""

from __future__ import annotations

import torch

from voicepipe.serve.engine import l2


def test_pack_copies_the_tensors_into_one_buffer_as_aligned_views():
    torch.manual_seed(0)
    ts = [torch.randn(*s).to(torch.bfloat16) for s in ((3, 5), (7,), (2, 2, 64))]
    flat, views = l2.pack(ts)
    assert all(v.shape == t.shape and torch.equal(v, t) for v, t in zip(views, ts, strict=True))
    base = flat.data_ptr()
    starts = [v.data_ptr() - base for v in views]
    assert all(s % 256 == 0 for s in starts) and starts == sorted(starts)  # aligned, in order, inside the buffer
    assert all(v.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for v in views)
    assert starts[-1] + views[-1].numel() * 2 <= flat.numel() * 2
    views[1].zero_()  # views, not copies: a write lands in the buffer
    assert flat[starts[1] // 2 : starts[1] // 2 + 7].abs().sum() == 0 and torch.equal(views[0], ts[0])
