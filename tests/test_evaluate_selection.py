"""The selection rule: deterministic, valid-only, WER ceiling, ties by validation loss, base floor."""

from __future__ import annotations

import itertools

import numpy as np

from voicepipe.evaluate.selection import SelectionRule, select_checkpoint


def row(name: str, sim: float | None, wer: float | None = 0.05, *, role: str = "checkpoint", status: str = "ok",
        n: int = 10, valid: int = 10, val_loss: float | None = None, epoch: int | None = None) -> dict:
    return dict(name=name, role=role, status=status, n_samples=n, n_valid=valid, sim=sim, wer=wer,
                val_loss=val_loss, epoch=epoch, error="boom" if status != "ok" else None)


ROWS = [
    row("base (zero-shot clone)", 0.70, 0.04, role="base"),
    row("reference (v3 epoch-3)", 0.95, 0.01, role="reference"),
    row("epoch-001", 0.72, 0.05, val_loss=9.9, epoch=1),
    row("epoch-002", 0.78, 0.06, val_loss=9.7, epoch=2),
    row("epoch-003", 0.7801, 0.05, val_loss=9.6, epoch=3),  # ties with epoch-002 at 3 decimals, lower val loss
    row("epoch-004", 0.90, 0.50, val_loss=9.5, epoch=4),  # best SIM but unintelligible
    row("epoch-005", 0.93, 0.02, valid=5, val_loss=9.4, epoch=5),  # best SIM but half its samples invalid
    row("epoch-006", None, None, status="failed", epoch=6),
]


def test_rule_picks_best_valid_intelligible_and_breaks_ties_by_val_loss() -> None:
    sel = select_checkpoint(ROWS)
    assert sel.chosen == "epoch-003" and sel.promotable
    assert sel.ranking == ["epoch-003", "epoch-002", "epoch-001"]
    assert sel.wer_ceiling == 0.20  # max(0.20, 1.5 x base WER 0.04)
    assert "WER 0.500 above the ceiling" in sel.excluded["epoch-004"]
    assert "5/10 samples valid" in sel.excluded["epoch-005"]
    assert sel.excluded["epoch-006"].startswith("failed")
    assert "reference (v3 epoch-3)" not in sel.ranking and "base (zero-shot clone)" not in sel.ranking


def test_selection_is_deterministic_under_any_input_order() -> None:
    outcomes = {(s.chosen, tuple(s.ranking)) for s in (select_checkpoint(list(p))
                                                       for p in itertools.islice(itertools.permutations(ROWS), 400))}
    assert outcomes == {("epoch-003", ("epoch-003", "epoch-002", "epoch-001"))}


def test_full_tie_falls_back_to_earlier_epoch_then_name() -> None:
    rows = [row("epoch-010", 0.8, epoch=10), row("epoch-002", 0.8, epoch=2), row("epoch-007", 0.8, epoch=7)]
    assert select_checkpoint(rows).chosen == "epoch-002"


def test_not_promoted_unless_it_beats_the_zero_shot_clone() -> None:
    rows = [row("base (zero-shot clone)", 0.80, 0.03, role="base"), row("epoch-001", 0.79, 0.03, epoch=1)]
    sel = select_checkpoint(rows)
    assert sel.chosen == "epoch-001" and not sel.promotable and "does not beat" in sel.reason
    assert select_checkpoint(rows, SelectionRule(require_beat_base=False)).promotable


def test_wer_ceiling_scales_with_a_weak_asr_on_the_base() -> None:
    rows = [row("base (zero-shot clone)", 0.60, 0.40, role="base"), row("epoch-001", 0.70, 0.55, epoch=1)]
    sel = select_checkpoint(rows)
    assert abs(sel.wer_ceiling - 0.60) < 1e-9 and sel.chosen == "epoch-001" and sel.promotable
    assert select_checkpoint(rows, SelectionRule(wer_vs_base=1.0)).chosen is None


def test_nothing_valid_means_nothing_chosen() -> None:
    sel = select_checkpoint([row("epoch-001", 0.9, valid=0, epoch=1), row("epoch-002", None, valid=10, epoch=2)])
    assert sel.chosen is None and not sel.promotable and sel.ranking == []
    assert "no speaker similarity" in sel.excluded["epoch-002"]


def test_checkpoints_from_s3_prefix(s3_server, tmp_path) -> None:
    """`--checkpoints s3://bucket/prefix` downloads the training output (moto S3 server) and finds its epochs."""
    import json
    import uuid

    from tests.fixtures.store import raw_s3_client, s3_settings_for
    from voicepipe.evaluate import runner as R

    prefix = f"runs-{uuid.uuid4().hex[:8]}/alice"
    s3 = raw_s3_client(s3_server)
    if "voicepipe-test" not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket="voicepipe-test")
    training = {"epochs": [{"epoch": 1, "val_loss": 9.5}, {"epoch": 2, "val_loss": 9.1}]}
    objects = {"training.json": json.dumps(training), "epoch-001/config.json": "{}", "epoch-002/config.json": "{}",
               "epoch-002/speech_tokenizer/config.json": "{}"}
    for key, body in objects.items():
        s3.put_object(Bucket="voicepipe-test", Key=f"{prefix}/{key}", Body=body.encode())
    url = f"s3://voicepipe-test/{prefix}"
    got = R._fetch(url, "checkpoints", tmp_path / "dl", settings=s3_settings_for(s3_server, url, tmp_path))
    assert (got / "epoch-002" / "speech_tokenizer" / "config.json").is_file()
    entries = R.find_checkpoints(got, R.read_training(got))
    assert [(e.name, e.epoch, e.val_loss) for e in entries] == [("epoch-001", 1, 9.5), ("epoch-002", 2, 9.1)]


def test_promotion_needs_more_than_the_speaker_models_margin_floor() -> None:
    rows = [row("base (zero-shot clone)", 0.800, 0.03, role="base"), row("epoch-001", 0.815, 0.03, epoch=1)]
    sel = select_checkpoint(rows, SelectionRule(sim_margin=0.02))  # resemblyzer's floor: +0.015 is noise
    assert sel.chosen == "epoch-001" and not sel.promotable
    assert "by more than the margin 0.020" in sel.reason and sel.sim_margin == 0.02
    assert "paired standard error not measurable" in sel.margin_detail  # dict rows carry no per-sample scores
    sel = select_checkpoint(rows, SelectionRule(sim_margin=0.01))  # a verification model's floor
    assert sel.promotable and sel.sim_margin == 0.01 and "ΔSIM +0.015 > margin 0.010" in sel.reason
    # with nothing to beat there is no margin
    assert select_checkpoint(rows[1:], SelectionRule(sim_margin=0.02)).sim_margin is None


def _scored(name: str, role: str, sims: list[float]) -> object:
    from voicepipe.evaluate.runner import Row, SampleResult

    samples = [SampleResult("script", f"text {i}", valid=True, sim=s) for i, s in enumerate(sims)]
    r = Row(name, role, "/nowhere", epoch=1 if role == "checkpoint" else None, n_samples=len(sims),
            n_valid=len(sims), sim=float(sum(sims) / len(sims)), wer=0.05)
    r.samples = samples
    return r


def test_paired_standard_error_raises_the_margin_for_noisy_gains() -> None:
    base = [0.70, 0.72, 0.68, 0.71, 0.69, 0.70]
    steady = [b + 0.03 for b in base]  # +0.03 on every text: SE 0, the floor decides
    noisy = [0.80, 0.62, 0.83, 0.60, 0.84, 0.61]  # mean +0.03 too, but text by text it is a coin toss
    rule = SelectionRule(sim_margin=0.01)
    sel = select_checkpoint([_scored("base (zero-shot clone)", "base", base), _scored("epoch-001", "checkpoint",
                                                                                      steady)], rule)
    assert sel.promotable and abs(sel.sim_margin - 0.01) < 1e-9 and "over 6 texts" in sel.margin_detail
    sel = select_checkpoint([_scored("base (zero-shot clone)", "base", base), _scored("epoch-001", "checkpoint",
                                                                                      noisy)], rule)
    d = np.array(noisy) - np.array(base)
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert not sel.promotable and abs(sel.sim_margin - 2 * se) < 1e-9 and sel.sim_margin > 0.03
    assert select_checkpoint([_scored("base (zero-shot clone)", "base", base),
                              _scored("epoch-001", "checkpoint", noisy)], SelectionRule(margin_se=0)).promotable
