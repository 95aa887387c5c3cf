"""The `train_voice` Prefect flow against the session's real local Prefect server: it trains, uploads to the store
and attaches the per-epoch table, summary and a link to training.json as artifacts."""

from __future__ import annotations

from pathlib import Path


def test_train_voice_flow_trains_uploads_and_publishes(prefect_api, structured_corpus_dir: Path,
                                                       tiny_tts_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    from flows.train import TrainParams, train_voice
    from voicepipe.store import open_store

    store_url = f"file://{tmp_path / 'store'}"
    params = TrainParams(corpus=str(structured_corpus_dir), base=str(tiny_tts_dir), speaker="Tester",
                         out=str(tmp_path / "run"), config="v8", store_url=store_url,
                         overrides=dict(epochs=2, lr=3e-3, batch_size=2, grad_accum=1, keep_best=1,
                                        collapse_ratio=None, save_state=False))  # fmt: skip
    state = train_voice(params=params, return_state=True)
    result = state.result()
    assert result["status"] == "completed" and len(result["epochs"]) == 2
    assert Path(result["out_dir"], result["best"][0]["checkpoint"], "model.safetensors").exists()
    store = open_store(store_url)
    assert store.get_ref("train/tester/latest")["sha"] == result["store"]["training_json"]

    arts = {a["key"]: a for a in prefect_api.artifacts(str(state.state_details.flow_run_id))}
    assert arts["train-tester-epochs"]["type"] == "table"
    assert "best: epoch-00" in arts["train-tester-summary"]["data"]
    assert result["store"]["uri"] in arts["train-tester-training-json"]["data"]
