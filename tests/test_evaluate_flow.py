"""The `evaluate_checkpoints` Prefect flow against a real local Prefect server: a broken checkpoint becomes a failed
row, the reports are stored and attached as artifacts, nothing is promoted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def test_flow_reports_and_attaches_artifacts(prefect_api, tmp_path: Path) -> None:
    from flows.evaluate import EvaluateParams, evaluate_checkpoints
    from tests.test_evaluate_checkpoints import make_corpus
    from voicepipe.evaluate import EvalConfig
    from voicepipe.store import open_store

    corpus = make_corpus(tmp_path / "corpus", speaker="erin")
    run = tmp_path / "run"
    (run / "epoch-001").mkdir(parents=True)
    (run / "epoch-001" / "config.json").write_text("{ truncated")
    (run / "training.json").write_text(json.dumps({"epochs": [{"epoch": 1, "val_loss": 9.3}]}))
    store_url = f"file://{tmp_path / 'store'}"
    params = EvaluateParams(checkpoints=str(run), corpus=str(corpus), out_dir=str(tmp_path / "out"),
                            store_url=store_url, config=EvalConfig(asr="pocketsphinx", max_val_texts=1,
                                                                   script=["Hello there."]))
    state = evaluate_checkpoints(params=params, return_state=True)
    summary = state.result()
    assert summary["speaker"] == "erin" and summary["chosen"] is None and not summary["promoted"]
    assert [(r["name"], r["status"]) for r in summary["rows"]] == [("epoch-001", "failed")]
    store = open_store(store_url)
    assert store.get_ref("voices/erin") is None
    md = store.get_bytes(summary["reports"]["report.md"]["sha256"]).decode()
    assert "epoch-001" in md and "failed" in md

    arts = prefect_api.artifacts(str(state.state_details.flow_run_id))
    by_key = {a["key"]: a for a in arts}
    assert by_key["evaluation-erin-table"]["type"] == "table"
    assert "epoch-001" in by_key["evaluation-erin-report"]["data"]
    for name in ("report-md", "report-html", "metrics-png", "results-json"):  # links to the stored files
        link = by_key[f"evaluation-erin-{name}"]
        assert summary["reports"][name.replace("-", ".")]["uri"] in link["data"], link
