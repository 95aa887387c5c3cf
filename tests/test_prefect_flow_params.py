"""`train_voice` and `evaluate_checkpoints` take their params object or the same fields as keywords
(flows/_params.py). The flow bodies run through `.fn` (no Prefect run) with their first task replaced by a recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows._params import flow_params
from flows.evaluate import evaluate_checkpoints
from flows.train import TrainParams, train_voice
from voicepipe.errors import InputError


class Called(Exception):
    """Raised by a recorder to stop the flow body after its first task call."""


def test_params_object_wins_over_keywords() -> None:
    p = TrainParams(corpus="c", speaker="s", out="o")
    assert flow_params(TrainParams, p, flow="f", required=("corpus",), corpus="other", speaker=None) is p


def test_keywords_left_none_take_the_field_defaults() -> None:
    p = flow_params(TrainParams, None, flow="f", required=("corpus",), corpus="c", speaker="s", out="o", base=None,
                    overrides=None, store_url=None, resume=False)  # fmt: skip
    assert p.base == TrainParams.model_fields["base"].default
    assert p.overrides == {} and p.store_url is None
    assert p.resume is False  # a falsy value that is not None is kept


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: train_voice.fn(corpus="c", speaker="s"), "train_voice: give params, or corpus=, speaker= and out="),
        (lambda: train_voice.fn(corpus="c", speaker="", out="o"), "train_voice: give params, or corpus=, speaker="),
        (lambda: evaluate_checkpoints.fn(checkpoints="ck"),
         "evaluate_checkpoints: give params, or checkpoints= and corpus="),
    ],
)  # fmt: skip
def test_missing_required_keyword_names_the_flow(call: Any, message: str) -> None:
    with pytest.raises(InputError, match="^" + message):
        call()


def test_train_voice_keywords_reach_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.train

    seen: dict[str, Any] = {}

    def record(corpus: str, base: str, speaker: str, out: str, cfg: Any, *, store_url: Any, resume: bool) -> Any:
        seen.update(corpus=corpus, base=base, speaker=speaker, out=out, cfg=cfg, store_url=store_url, resume=resume)
        raise Called

    monkeypatch.setattr(tasks.train, "train_task", record)
    with pytest.raises(Called):
        train_voice.fn(corpus="store:corpus/x", speaker="Alice", out="/tmp/run", overrides={"epochs": 2}, resume=False)
    assert (seen["corpus"], seen["speaker"], seen["out"]) == ("store:corpus/x", "Alice", "/tmp/run")
    assert seen["base"] == TrainParams.model_fields["base"].default
    assert seen["cfg"].epochs == 2 and seen["store_url"] is None and seen["resume"] is False


def test_evaluate_checkpoints_keywords_reach_the_task(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import tasks.evaluate

    seen: dict[str, Any] = {}

    def record(checkpoints: str, corpus: str, config: Any, **kw: Any) -> Any:
        seen.update(checkpoints=checkpoints, corpus=corpus, config=config, **kw)
        raise Called

    monkeypatch.setattr(tasks.evaluate, "prepare_evaluation", record)
    monkeypatch.setattr("flows.evaluate.get_run_logger", lambda: None)  # no run context outside Prefect
    with pytest.raises(Called):
        evaluate_checkpoints.fn(checkpoints="ck", corpus="store:c", speaker="alice", overrides={"max_val_texts": 3},
                                store_url=f"file://{tmp_path / 'store'}")  # fmt: skip
    assert (seen["checkpoints"], seen["corpus"], seen["speaker"]) == ("ck", "store:c", "alice")
    assert seen["config"].max_val_texts == 3 and seen["reference"] is None and seen["base"] is None
    assert seen["out_dir"] is None and seen["store"].url == (tmp_path / "store").resolve().as_uri()
