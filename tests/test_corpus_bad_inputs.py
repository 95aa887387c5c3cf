"""Bad inputs through the real CLI command (`voicepipe corpus build` -> Prefect flow): each is recorded in
rejects.jsonl with its reason, the good episode finishes, and a rerun keeps what was already processed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voicepipe.corpus.synthetic import feed_items, write_feed


@pytest.fixture(scope="module")
def bad_run(corpus_prefect, synthetic_podcast, corpus_params_base, tmp_path_factory):
    from voicepipe.cli import cli

    pod, d = synthetic_podcast, synthetic_podcast.truth.dir
    raw = (d / pod.truth.episodes[1].file).read_bytes()
    (d / "truncated.mp3").write_bytes(raw[: int(len(raw) * 0.45)])
    (d / "empty.mp3").write_bytes(b"")
    (d / "huge.mp3").write_bytes(raw * 3)
    (d / "landing.html").write_text("<!DOCTYPE html><html><body>Listen on our app!</body></html>")
    (d / "broken.xml").write_text("<?xml version='1.0'?><rss><channel><title>x</title><item><title>a</ite")
    base = pod.base_url
    extra = [
        {"title": "html", "guid": "bad-html", "url": f"{base}/landing.html", "type": "audio/mpeg"},
        {"title": "truncated", "guid": "bad-truncated", "url": f"{base}/truncated.mp3"},
        {"title": "empty", "guid": "bad-empty", "url": f"{base}/empty.mp3"},
        {"title": "huge", "guid": "bad-huge", "url": f"{base}/huge.mp3"},  # no declared length: caught streaming
        {"title": "gone", "guid": "bad-unreachable", "url": "http://127.0.0.1:9/episode.mp3"},
    ]
    good = pod.truth.episodes[3]
    write_feed(d / "feed-bad.xml", feed_items(pod.truth, base, [good]) + extra)
    root = tmp_path_factory.mktemp("corpus-bad")
    b = corpus_params_base
    args = ["corpus", "build", "--speaker", b["speaker"], "--out", str(root / "out"), "--no-separate",
            "--asr-backend", "pocketsphinx", "--codec-model", b["codec_model"], "--max-episode-mb", "0.6",
            "--store", str(root / "store"), "--feed", f"{base}/feed-bad.xml", "--feed", f"{base}/broken.xml"]
    for e in b["enroll"]:
        args += ["--enroll", e]
    runner = CliRunner()
    first = runner.invoke(cli, args, catch_exceptions=False)
    second = runner.invoke(cli, [*args[:5], str(root / "out2"), *args[6:]], catch_exceptions=False)
    return {"first": first, "second": second, "root": root, "good": good.id}


def _rejects(out: Path) -> dict[str, str]:
    rows = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    return {(r["episode"] or r["source"]): r["reason"] for r in rows if r.get("start") is None}


def _summary(output: str) -> dict:
    """The JSON summary the command prints last (logs and progress bars may precede it)."""
    return json.JSONDecoder().raw_decode(output[output.rindex('{\n "version"') :])[0]


def test_each_bad_input_is_rejected_with_its_reason(bad_run):
    assert bad_run["first"].exit_code == 0, bad_run["first"].output
    rejects = _rejects(bad_run["root"] / "out")
    expected = {
        "bad-html": "HTML page", "bad-truncated": "truncated", "bad-empty": "empty file (0 bytes)",
        "bad-huge": "over the size limit", "bad-unreachable": "unreachable",
    }
    for ep, words in expected.items():
        assert words in rejects.get(ep, ""), (ep, rejects.get(ep))
    feed_reject = next(v for k, v in rejects.items() if k.endswith("broken.xml"))
    assert "malformed feed XML" in feed_reject


def test_good_episode_finishes_and_nothing_is_lost_on_rerun(bad_run):
    out, out2 = bad_run["root"] / "out", bad_run["root"] / "out2"
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert manifest and {m["episode"] for m in manifest} == {bad_run["good"]}
    s1, s2 = _summary(bad_run["first"].output), _summary(bad_run["second"].output)
    assert s1["episodes_ok"] == 1 and s1["episodes_rejected"] == 6
    assert s2["version"] == s1["version"]  # the good episode came back from the cache, unchanged
    assert (out2 / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    # one episode left: the feed check had nothing to compare it with, and the report says so
    assert json.loads((out / "corpus.json").read_text())["feed_check_episodes"] == 0
    assert "**The feed check judged no episode**" in (out / "report.md").read_text()


def test_cli_names_a_missing_enrollment_clip(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli", "corpus", "build", "--speaker", "x", "--out", str(tmp_path / "o"),
         "--feed", "http://127.0.0.1:9/feed.xml", "--enroll", str(tmp_path / "nope.wav"),
         "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: enrollment clip {tmp_path / 'nope.wav'}: no such file"
