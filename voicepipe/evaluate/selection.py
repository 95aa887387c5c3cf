"""The checkpoint selection rule, kept apart so it can be read (and tested) on its own.

Rule (deterministic; the input order of the rows does not matter):
1. Candidates are fine-tuned checkpoints (not the base model, not `--reference`) that loaded and synthesized.
2. Valid: at least `min_valid_fraction` of its samples pass every validity check.
3. Intelligible: corpus WER <= the ceiling, where ceiling = max(`wer_ceiling`, `wer_vs_base` x the base model's
   zero-shot WER) when the base was measured (a weak offline ASR raises everyone's WER alike).
4. Best speaker similarity wins; similarities equal to 3 decimals are a tie, broken by the lower validation loss
   (missing = worst), then the earlier epoch, then the name.
5. It is promoted only if its SIM beats the base model's zero-shot clone by MORE than the promotion margin (when
   the base was measured and `require_beat_base`): otherwise fine-tuning did not help, or not measurably, and the
   registry is left alone. margin = max(floor, `margin_se` x the standard error of the per-text SIM difference
   between the two; both synthesize the same texts with the same seeds, so texts are paired). The floor belongs to
   the speaker model that measured SIM (`voicepipe.models.speaker.PROFILES`): resemblyzer 0.02 (its same-speaker
   SIM spread measured on real conversational speech), wavlm and wespeaker 0.01 (the resolution of published SIM
   tables); the standard error is measured in the run itself, so a noisy model or a small script needs more.

`SelectionRule.plumbing()` is NOT this rule: for tests and demos with tiny random models (which never produce valid
speech) it takes every checkpoint that loaded and synthesized, ranks by validation loss, then epoch, and promotes the
first, so promotion -> registry -> serving can run as one chain. Its selections say so (`rule="plumbing"`), and the
voice card records it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SelectionRule:
    wer_ceiling: float = 0.20
    wer_vs_base: float = 1.5
    min_valid_fraction: float = 0.9
    require_beat_base: bool = True
    sim_decimals: int = 3
    sim_margin: float = 0.0  # floor of the promotion margin over the base (the speaker model's, see above)
    margin_se: float = 2.0  # standard errors of the paired per-text SIM difference the gain must also exceed
    margin_basis: str = ""  # how the floor was chosen (shown in the report)
    name: str = "strict"  # "strict" (the rule above) | "plumbing" (tests/demos only: see the module docstring)

    @classmethod
    def plumbing(cls) -> SelectionRule:
        """TESTS AND DEMOS ONLY: promote a checkpoint that merely loaded and synthesized (no validity, WER or SIM)."""
        return cls(wer_ceiling=math.inf, wer_vs_base=0.0, min_valid_fraction=0.0, require_beat_base=False,
                   name="plumbing")


@dataclass
class Selection:
    chosen: str | None  # name of the best checkpoint by the rule, None when no candidate qualifies
    promotable: bool
    reason: str
    ranking: list[str] = field(default_factory=list)  # qualified candidates, best first
    excluded: dict[str, str] = field(default_factory=dict)  # name -> why it is not a candidate
    wer_ceiling: float | None = None
    sim_margin: float | None = None  # the promotion margin applied (None: no base to beat)
    margin_detail: str = ""  # how that margin came about: floor, paired standard error, pairs
    rule: str = "strict"  # the SelectionRule's name


def paired_sim_se(row: Any, base: Any) -> tuple[float, int]:
    """Standard error of the mean per-text SIM difference between `row` and `base` over the texts where both
    produced a valid, embedded sample (pairs by position: both synthesize the same texts in the same order), and
    the number of pairs; (nan, n) with fewer than 3 pairs or no per-sample scores."""
    a, b = getattr(row, "samples", None) or [], getattr(base, "samples", None) or []
    d = [x.sim - y.sim for x, y in zip(a, b, strict=False)
         if x.valid and y.valid and x.sim is not None and y.sim is not None and x.text == y.text]
    if len(d) < 3:
        return math.nan, len(d)
    return float(np.std(d, ddof=1) / math.sqrt(len(d))), len(d)


def promotion_margin(rule: SelectionRule, row: Any, base: Any) -> tuple[float, str]:
    """The margin `row` must beat the base's SIM by, and a sentence saying how it was set."""
    se, n = paired_sim_se(row, base)
    floor = f"floor {rule.sim_margin:.3f}"
    if math.isnan(se) or rule.margin_se <= 0:
        why = f"{floor} (paired standard error not measurable: {n} paired texts)" if rule.margin_se > 0 else floor
        return rule.sim_margin, why
    margin = max(rule.sim_margin, rule.margin_se * se)
    return margin, f"max({floor}, {rule.margin_se:g} x paired SE {se:.4f} over {n} texts)"


def _num(x: Any) -> float:
    return float(x) if x is not None and not (isinstance(x, float) and math.isnan(x)) else math.nan


def select_checkpoint(rows: Sequence[Any], rule: SelectionRule = SelectionRule()) -> Selection:
    """Apply the rule to evaluated rows (objects or dicts with `name, role, status, n_samples, n_valid, sim, wer,
    val_loss, epoch`)."""
    def get(r: Any, k: str) -> Any:
        return r.get(k) if isinstance(r, dict) else getattr(r, k, None)

    if rule.name == "plumbing":
        return _plumbing(rows, get)

    base = next((r for r in rows if get(r, "role") == "base" and get(r, "status") == "ok"), None)
    base_sim = _num(get(base, "sim")) if base is not None else math.nan
    base_wer = _num(get(base, "wer")) if base is not None else math.nan
    ceiling = rule.wer_ceiling if math.isnan(base_wer) else max(rule.wer_ceiling, rule.wer_vs_base * base_wer)

    excluded: dict[str, str] = {}
    ok: list[Any] = []
    for r in sorted(rows, key=lambda r: str(get(r, "name"))):
        name = str(get(r, "name"))
        if get(r, "role") != "checkpoint":
            continue
        if get(r, "status") != "ok":
            excluded[name] = f"failed: {get(r, 'error')}"
            continue
        n, n_valid = int(get(r, "n_samples") or 0), int(get(r, "n_valid") or 0)
        if n == 0 or n_valid / n < rule.min_valid_fraction:
            excluded[name] = f"invalid: {n_valid}/{n} samples valid (need {rule.min_valid_fraction:.0%})"
            continue
        sim, wer = _num(get(r, "sim")), _num(get(r, "wer"))
        if math.isnan(sim):
            excluded[name] = "no speaker similarity (no sample had enough voice to embed)"
            continue
        if math.isnan(wer) or wer > ceiling:
            excluded[name] = f"WER {wer:.3f} above the ceiling {ceiling:.3f}"
            continue
        ok.append(r)

    def key(r: Any) -> tuple[Any, ...]:
        vl = _num(get(r, "val_loss"))
        ep = get(r, "epoch")
        return (-round(_num(get(r, "sim")), rule.sim_decimals), math.inf if math.isnan(vl) else vl,
                math.inf if ep is None else int(ep), str(get(r, "name")))

    ranked = sorted(ok, key=key)
    ranking = [str(get(r, "name")) for r in ranked]
    if not ranked:
        return Selection(None, False, "no checkpoint is valid and under the WER ceiling", ranking, excluded, ceiling)
    best = ranked[0]
    sim = _num(get(best, "sim"))
    name = str(get(best, "name"))
    if math.isnan(base_sim):
        return Selection(name, True, f"{name}: best SIM {sim:.3f} (base not measured), WER "
                         f"{_num(get(best, 'wer')):.3f} <= {ceiling:.3f}", ranking, excluded, ceiling)
    margin, detail = promotion_margin(rule, best, base)
    if rule.require_beat_base and not sim - base_sim > margin:
        return Selection(name, False, f"best checkpoint {name} (SIM {sim:.3f}) does not beat the base model's "
                         f"zero-shot clone (SIM {base_sim:.3f}) by more than the margin {margin:.3f}: fine-tuning "
                         "did not measurably help", ranking, excluded, ceiling, margin, detail)
    return Selection(name, True, f"{name}: best SIM {sim:.3f} (base zero-shot SIM {base_sim:.3f}, "
                     f"ΔSIM {sim - base_sim:+.3f} > margin {margin:.3f}), WER {_num(get(best, 'wer')):.3f} "
                     f"<= {ceiling:.3f}", ranking, excluded, ceiling, margin, detail)


def _plumbing(rows: Sequence[Any], get: Any) -> Selection:
    """The plumbing rule (tests/demos): every checkpoint that loaded and synthesized, best validation loss first."""
    excluded: dict[str, str] = {}
    ok = []
    for r in rows:
        if get(r, "role") != "checkpoint":
            continue
        if get(r, "status") != "ok" or not int(get(r, "n_samples") or 0):
            excluded[str(get(r, "name"))] = f"failed: {get(r, 'error')}"
            continue
        ok.append(r)

    def key(r: Any) -> tuple[Any, ...]:
        vl, ep = _num(get(r, "val_loss")), get(r, "epoch")
        return (math.inf if math.isnan(vl) else vl, math.inf if ep is None else int(ep), str(get(r, "name")))

    ranking = [str(get(r, "name")) for r in sorted(ok, key=key)]
    if not ranking:
        return Selection(None, False, "plumbing rule: no checkpoint loaded and synthesized", ranking, excluded,
                         rule="plumbing")
    return Selection(ranking[0], True, f"{ranking[0]}: PLUMBING RULE (tests/demos only; validity, WER and SIM not "
                     "checked), lowest validation loss", ranking, excluded, rule="plumbing")
