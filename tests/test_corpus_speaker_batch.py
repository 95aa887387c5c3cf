"""The corpus speaker engine's batched `embed_many` computes what per-clip `embed` does (real weights: resemblyzer's
and CAM++'s)."""

from __future__ import annotations

import numpy as np
import pytest

from voicepipe.audio import resample
from voicepipe.corpus.engines import SpeakerEncoder
from voicepipe.corpus.synthetic import speak


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """16 kHz espeak-ng speech of several lengths and two voices, plus clips `embed` turns into zeros."""
    long = "This is a fairly long sentence, and then a few more words follow it to need many windows."
    wavs = [
        resample(speak(t, v), 24000, 16000)
        for t in ("Hi.", "Hello there, how are you today?", long)
        for v in ("en-us", "en-gb")
    ]
    assert max(len(w) for w in wavs) > 16000 * 5 and min(len(w) for w in wavs) < 16000  # one window .. many
    return [
        *wavs,
        wavs[4][:25600],  # exactly one 1.6 s window
        wavs[4][:25601],  # one sample more
        wavs[0][:800],  # 0.05 s: too short to embed -> zeros
        np.zeros(16000, np.float32),  # silent -> zeros
    ]


@pytest.fixture(scope="module", params=["resemblyzer", "campplus"])
def encoder(request) -> SpeakerEncoder:
    from voicepipe.config import load_settings

    return SpeakerEncoder(load_settings(speaker_backend=request.param))


def test_embed_many_matches_embed_per_clip(encoder: SpeakerEncoder, clips: list[np.ndarray]) -> None:
    one_by_one = np.stack([encoder.embed(w) for w in clips])
    batched = encoder.embed_many(clips)
    assert batched.shape == (len(clips), encoder.model.dim) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)
    norms = np.linalg.norm(batched, axis=1)
    np.testing.assert_allclose(norms[:-2], 1.0, atol=1e-5)  # real speech: unit vectors
    assert not batched[-2:].any()  # too short and silent: zeros, as `embed`
    # distinct clips get clearly distinct embeddings, so the 1e-5 match above also checks the clip order
    speech = batched[:-3]  # (the 25601-sample clip has the same single window as the 25600-sample one)
    gaps = np.abs(speech[:, None] - speech[None]).max(axis=2) + np.eye(len(speech))
    assert gaps.min() > 1e-3
    # splitting the windows into several forward passes changes nothing
    np.testing.assert_allclose(encoder.embed_many(clips, max_partials=3), one_by_one, atol=1e-5, rtol=0)


def test_embed_many_edge_cases(encoder: SpeakerEncoder, clips: list[np.ndarray]) -> None:
    assert encoder.embed_many([]).shape == (0, encoder.model.dim)
    assert not encoder.embed_many([clips[-1], clips[-2]]).any()
    np.testing.assert_allclose(encoder.embed_many([clips[2]])[0], encoder.embed(clips[2]), atol=1e-5, rtol=0)
    c = encoder.centroid(clips[:3])
    expect = np.stack([encoder.embed(w) for w in clips[:3]]).mean(axis=0)
    np.testing.assert_allclose(c, expect / np.linalg.norm(expect), atol=1e-5, rtol=0)
