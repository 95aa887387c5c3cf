"""A corpus build killed mid-ingestion (SIGKILL) and restarted reuses the finished episodes and loses none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.prefect import REPO, corpus_clips, corpus_params

pytestmark = pytest.mark.slow

RUN = """
import json, sys
from flows.corpus import build_corpus
from voicepipe.corpus.config import CorpusParams
res = build_corpus(CorpusParams(**json.loads(sys.argv[1])))
res = res if isinstance(res, dict) else res.model_dump(mode="json")
print("RESULT " + json.dumps({k: res[k] for k in ("version", "episodes_ok", "episodes_rejected", "cache")}))
"""


def _start(params: dict, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, json.dumps(params)], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115


def _memo_count(store_dir: Path, step: str) -> int:
    d = store_dir / "memo" / f"corpus.{step}"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


def _result(log: Path) -> dict:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")]
    assert lines, log.read_text()[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_killed_build_restarts_from_cached_episodes(
    prefect_server, prefect_podcast, reference_corpus, tmp_path: Path
) -> None:
    store_dir = tmp_path / "store"
    n_eps = len(prefect_podcast["truth"].episodes)
    params = corpus_params(prefect_podcast, "resumespeaker", f"file://{store_dir}", tmp_path / "out", workers=1)
    env = {**prefect_server.env, "VOICEPIPE_HOME": str(tmp_path)}

    # 1. start a build, SIGKILL it (no cleanup of any kind) once the first episode is fully processed
    first = _start(params, env, tmp_path / "run1.log")
    deadline = time.monotonic() + 240
    while _memo_count(store_dir, "encode") < 1:
        assert first.poll() is None, f"build ended before it could be killed:\n{(tmp_path / 'run1.log').read_text()}"
        assert time.monotonic() < deadline, (tmp_path / "run1.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    done_before_kill = _memo_count(store_dir, "encode")
    assert 1 <= done_before_kill < n_eps, "the kill came too late to be mid-ingestion"
    assert "RESULT" not in (tmp_path / "run1.log").read_text()

    # 2. restart with the same parameters: finished episodes come from the cache, the rest are processed
    second = _start(params, env, tmp_path / "run2.log")
    assert second.wait(300) == 0, (tmp_path / "run2.log").read_text()[-4000:]
    res = _result(tmp_path / "run2.log")
    assert res["episodes_ok"] + res["episodes_rejected"] == n_eps
    assert res["episodes_rejected"] == 0
    assert res["cache"]["encode"]["hit"] >= done_before_kill
    assert res["cache"]["encode"]["hit"] + res["cache"]["encode"]["miss"] == n_eps
    assert res["cache"]["fetch"]["hit"] >= done_before_kill

    # 3. nothing lost, nothing changed: the same clips and the same corpus version (manifest: clips, texts, ASR
    # confidences, scores) as an uninterrupted build of the same inputs (fresh store, no Prefect)
    assert corpus_clips(tmp_path / "out") == reference_corpus["clips"]
    assert res["version"] == reference_corpus["result"].version, (
        (tmp_path / "out" / "manifest.jsonl").read_text(), (reference_corpus["dir"] / "manifest.jsonl").read_text())
