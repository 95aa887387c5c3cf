"""Replay the feed check (`voicepipe.corpus.speakers.feed_outliers`) on stored purity builds, under other rules.

    python benchmarks/feed_rule.py BUILD [BUILD ...] [--mad-k 3 4 5] [--min-gap 0.02 0.03 0.05]

A BUILD is a directory `benchmarks/corpus_purity.py --work` left (`out/corpus.json` and `store/`); its podcast (the
truth) is the directory of its enrollment clips. Each build is re-run on its own store (every step cached, so only
assembly runs again: seconds) to read what the feed check was given: each episode's target voice and the enrollment.
Then, per rule, which episodes the check calls "not the feed's voice", against the truth (T: the target speaks in
the episode; a: absent). Rules:
  - `reference` (the shipped rule): the scale is the MAD of the reference half's scores (the episodes nearest the
    enrollment), at least `min_gap` below their median (`mad_k` 5, `min_gap` 0.05);
  - `feed`: the same, with the scale measured over every judged episode's score (the lead the twenty-fifth session
    left in benchmarks/RESULTS.md: real voices' target episodes spread wider than synthetic ones).
A dropped T costs that episode's recall; an a kept may still be caught later (the target-speaker floor, the feed's
other voices), so a replay is a lead for a full re-run, not a purity figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from voicepipe.corpus import speakers  # noqa: E402


def stored_build(build: Path) -> tuple[dict, object]:
    """(the build's parameters, its podcast's truth narrowed to the episodes it built)."""
    from voicepipe.corpus.synthetic import PodcastTruth

    cj = json.loads((build / "out" / "corpus.json").read_text())
    truth = PodcastTruth.load(Path(cj["params"]["enroll"][0]).parent)
    built = {e["episode"] for e in cj["episode_speakers"]}
    truth.episodes = [ep for ep in truth.episodes if ep.id in built]
    return cj["params"], truth


def feed_inputs(build: Path) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """(episode -> target voice, enrollment centroid, episode -> the target's own seconds) as the build's assembly
    gives them to the feed check, re-run from the build's store."""
    import voicepipe.corpus.assemble as assemble
    from voicepipe.corpus.assemble import CorpusRejected
    from voicepipe.corpus.synthetic import build_feed

    params, truth = stored_build(build)
    seen: list[tuple[dict, np.ndarray]] = []
    judge = assemble.judge_feed

    def spy(episodes: dict, enroll: np.ndarray, **kw: object) -> object:
        seen.append(({k: np.asarray(e.get("voice", []), dtype=np.float64) for k, e in episodes.items()},
                     np.asarray(enroll, dtype=np.float64)))
        return judge(episodes, enroll, **kw)

    assemble.judge_feed = spy
    try:
        with tempfile.TemporaryDirectory(dir=build) as root:
            try:
                build_feed(truth, root, params["codec_model"], enroll=params["enroll"], store_url=str(build / "store"),
                           separate=params["separate"], separator=params["separator"], workers=2)
            except CorpusRejected:  # (a build that keeps almost nothing still judged its feed first)
                pass
    finally:
        assemble.judge_feed = judge
    if not seen:
        raise SystemExit(f"{build}: the feed check never ran (is out/corpus.json a purity build's?)")
    voices, enroll = seen[-1]
    return voices, enroll, {ep.id: sum(b - a for a, b in ep.target_only()) for ep in truth.episodes}


def feed_spread_outliers(voices: dict[str, np.ndarray], enroll: np.ndarray, mad_k: float,
                         min_gap: float) -> dict[str, float]:
    """`feed_outliers` with its scale measured over every judged episode's score, not the reference half's."""
    vecs = {k: speakers.unit(v) for k, v in voices.items() if v.size and np.any(v)}
    e = speakers.unit(enroll)
    out: dict[str, float] = {}
    while len(vecs) >= speakers.FEED_MIN_EPISODES:
        keys = list(vecs)
        m = np.stack([vecs[k] for k in keys])
        sims = m @ m.T
        ref = np.argsort(-(m @ e), kind="stable")[: max(2, (len(keys) + 1) // 2)]
        cur = {k: float(np.median(sims[i, [j for j in ref if j != i]])) for i, k in enumerate(keys)}
        vals = np.asarray(list(cur.values()))
        spread = 1.4826 * float(np.median(np.abs(vals - np.median(vals))))
        med = float(np.median([cur[keys[j]] for j in ref]))
        worst = min(cur, key=cur.__getitem__)
        if cur[worst] >= med - max(mad_k * spread, min_gap):
            break
        out[worst] = cur[worst]
        del vecs[worst]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--mad-k", type=float, nargs="+", default=[3.0, 4.0, 5.0])
    ap.add_argument("--min-gap", type=float, nargs="+", default=[0.02, 0.03, 0.05])
    args = ap.parse_args()
    rules = [("reference", 5.0, 0.05)] + [("feed", k, g) for k in args.mad_k for g in args.min_gap]
    tally = {r: [0, 0, 0] for r in rules}  # target episodes dropped, absent dropped, absent left
    for build in args.builds:
        voices, enroll, own = feed_inputs(build)
        scores, shipped = speakers.feed_outliers(voices, enroll)
        e = speakers.unit(enroll)
        tag = {k: "T" if own.get(k, 0.0) > 0 else "a" for k in scores}
        print(f"{build.name}: " + " ".join(
            f"{k}:{tag[k]} {scores[k]:.2f} (enrol {float(speakers.unit(voices[k]) @ e):.2f})"
            for k in sorted(scores, key=lambda x: -scores[x])))
        for rule in rules:
            out = shipped if rule[0] == "reference" else feed_spread_outliers(voices, enroll, rule[1], rule[2])
            lost = sorted(k for k in out if tag[k] == "T")
            found = sorted(k for k in out if tag[k] == "a")
            left = sorted(k for k in scores if tag[k] == "a" and k not in out)
            for i, n in enumerate((len(lost), len(found), len(left))):
                tally[rule][i] += n
            print(f"    {rule[0]:9s} mad_k {rule[1]:g} min_gap {rule[2]:g}: target episodes dropped {lost}, "
                  f"absent dropped {found}, absent left {left}")
    print("\nall builds: rule -> target episodes dropped / absent episodes dropped / absent episodes left")
    for rule, (lost, found, left) in tally.items():
        print(f"    {rule[0]:9s} mad_k {rule[1]:g} min_gap {rule[2]:g}: {lost} / {found} / {left}")


if __name__ == "__main__":
    main()
