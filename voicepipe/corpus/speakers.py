"""Who speaks when inside one episode, decided relative to that episode's own speakers (the CPU diarizer).

A fixed cosine threshold to the enrollment cannot work across shows: how far two voices embed apart depends on
the pair (and on the speaker model). So, per episode:

0. `units`: the VAD speech regions, less overlapped speech, cut at every change of speaker that pyannote's
   segmentation model hears without a pause (`change_points`), so no window below holds two voices.
1. `windows`: short windows (1.5 s, hop 0.25 s) over those units, each embedded by the speaker encoder (any
   L2-normalised fp32 embedding; cosine = dot product).
2. `cluster`: k-means of those windows on the unit sphere, seeded with the enrollment, into the episode's
   speakers; the number of speakers is the one with the best silhouette; `split_target` then splits the cluster
   nearest the enrollment while it clearly holds two voices. `recount` (when the units are embedded whole:
   `Units`, each unit of at least 2 s as one embedding) chooses among the same k-means partitions again by their
   silhouette on the units, which embed a voice more steadily than 1.5 s windows; only units whose windows that
   first clustering puts in one cluster judge (the segmentation model misses changes between similar voices),
   and a split of the target's cluster must also part its units.
3. `EpisodeSpeakers.target`: the cluster whose centroid is nearest the enrollment centroid.
4. `decide`: each window is the target's only when it is nearer the target centroid than every other speaker's by a
   margin that is a fraction of the distance between those two speakers, and when it is not an outlier among the
   target's own windows (overlapped speech and backchannels pull a window's embedding off the speaker it is on).
   `spare_tails`: a unit shorter than one window next to overlapped speech (`overlap_tails`: the rest of a
   sentence after a "yeah") is judged by the margin alone, since a short window's cosine is low for every voice.
5. `timeline`: the per-window decisions mapped onto hop-sized slots of time, so a change of speaker inside a
   speech region (no pause) becomes a cut; `guard_changes` then gives up a little of the target's time on its
   side of each such cut (where the change really is, and any crosstalk, is only known to a few tenths of a second).
6. `cut_overlap`: the target's time where an overlapped-speech detector hears two voices at once (a backchannel
   under the target, crosstalk) is given up: a short "yeah" barely moves a 1.5 s window's embedding, so the
   windows cannot see it (benchmarks/RESULTS.md, corpus purity); `guard_tails` guards the spared tails' edge.

Hand-written glue around scikit-learn (k-means, silhouette) and pyannote's segmentation output: the decision rules
are the point of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicepipe.corpus import intervals

WIN_S = 1.5
HOP_S = 0.25


def windows(speech: list[tuple[float, float]], win_s: float = WIN_S, hop_s: float = HOP_S,
            min_s: float = 0.3) -> list[tuple[float, float]]:
    """Windows of `win_s` every `hop_s` inside each speech region (a shorter region: itself, if >= `min_s`); the
    last window of a region ends at the region's end."""
    out: list[tuple[float, float]] = []
    for s, e in speech:
        if e - s < min_s:
            continue
        if e - s <= win_s:
            out.append((float(s), float(e)))
            continue
        starts = list(np.arange(s, e - win_s + 1e-9, hop_s))
        if e - (starts[-1] + win_s) > 1e-6:
            starts.append(e - win_s)
        out.extend((float(a), float(a + win_s)) for a in starts)
    return out


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (fp32): cosine becomes a dot product."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def fuse(*embs: np.ndarray) -> np.ndarray:
    """Score fusion of several speaker models: their unit embeddings side by side, scaled by 1/sqrt(n), so the
    cosine of two fused embeddings is the mean of the models' cosines (rows: windows; or one 1-d embedding each)."""
    return (np.concatenate([unit(e) for e in embs], axis=-1) / np.sqrt(len(embs))).astype(np.float32)


def _centroids(embs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return unit(np.stack([embs[labels == i].mean(axis=0) for i in range(k)]))


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0..k-1 by first appearance."""
    order: dict[int, int] = {}
    for lab in labels:
        order.setdefault(int(lab), len(order))
    return np.asarray([order[int(lab)] for lab in labels], dtype=np.int64), len(order)


def cluster(embs: np.ndarray, enroll: np.ndarray | None = None, *, max_speakers: int = 6, max_points: int = 1500,
            min_silhouette: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Cluster unit embeddings (n, d) into speakers: (labels (n,), centroids (k, d) fp32 unit).

    k-means on the unit sphere (scikit-learn) for 2..`max_speakers` clusters, seeded with the enrollment centroid
    (`enroll`, when given) and then farthest-first windows, on at most `max_points` windows (evenly strided: long
    episodes); the count with the best cosine silhouette wins (one speaker if none reaches `min_silhouette`);
    every window then goes to its nearest centroid. Seeding with the enrollment matters: the target's windows
    gather around it even when another voice embeds close to it (average-linkage clustering merged such voices
    on the synthetic podcasts, though the windows were separable by their true centroids).
    """
    embs = unit(embs)
    n = len(embs)
    if n < 4:
        labels = np.zeros(n, dtype=np.int64)
        return labels, (_centroids(embs, labels, 1) if n else embs)
    best_score, best_cents = -1.0, None
    for score, cents in _candidates(embs, enroll, max_speakers, max_points):
        if score > best_score:
            best_score, best_cents = score, cents
    if best_cents is None or best_score < min_silhouette:
        best_cents = unit(embs[:: max(1, int(np.ceil(n / max_points)))].mean(axis=0, keepdims=True))
    labels, k = _relabel(np.argmax(embs @ best_cents.T, axis=1))
    return labels, _centroids(embs, labels, k)


def _candidates(embs: np.ndarray, enroll: np.ndarray | None, max_speakers: int,
                max_points: int) -> list[tuple[float, np.ndarray]]:
    """`cluster`'s k-means for 2..`max_speakers` clusters: (cosine silhouette of the windows, centroids) each."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    step = max(1, int(np.ceil(len(embs) / max_points)))
    sample = embs[::step]
    first = unit(enroll) if enroll is not None else sample[int(np.argmax(sample @ sample.mean(axis=0)))]
    out = []
    for k in range(2, min(max_speakers, len(sample) - 1) + 1):
        init = [first]
        for _ in range(k - 1):  # farthest-first: the window least like every seed so far
            init.append(sample[int(np.argmax(np.min(1.0 - sample @ np.stack(init).T, axis=1)))])
        km = KMeans(n_clusters=k, init=np.stack(init), n_init=1, max_iter=100).fit(sample)
        if len(set(km.labels_.tolist())) < 2:
            continue
        out.append((float(silhouette_score(sample, km.labels_, metric="cosine")), unit(km.cluster_centers_)))
    return out


def split_target(embs: np.ndarray, enroll: np.ndarray, labels: np.ndarray, cents: np.ndarray, *,
                 min_silhouette: float = 0.25, max_splits: int = 3,
                 units: Units | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split the cluster nearest the enrollment while it holds two voices: 2-means of its windows seeded with the
    enrollment and its member least like it; kept when that split's cosine silhouette reaches `min_silhouette`
    (one voice split in two scores ~0.1-0.2 on the synthetic podcasts, a voice and an ad reader 0.3+). The
    episode-wide silhouette favours the coarsest partition, which can leave a third voice inside the target's.
    With `units`, the split must also hold on the cluster's units embedded whole: at least three of them, in both
    parts, with a silhouette of at least `min_silhouette` (`Units.split_silhouette`); a voice that 2-means cuts by
    the windows' noise does not part its whole units."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    for _ in range(max_splits):
        t = int(np.argmax(cents @ enroll))
        members = np.flatnonzero(labels == t)
        if len(members) < 12:
            break
        x = embs[members]
        far = x[int(np.argmax(1.0 - x @ enroll))]
        km = KMeans(n_clusters=2, init=np.stack([enroll, far]), n_init=1, max_iter=100).fit(x)
        if np.bincount(km.labels_, minlength=2).min() < 4:
            break
        if float(silhouette_score(x, km.labels_, metric="cosine")) < min_silhouette:
            break
        parts = [unit(x[km.labels_ == i].mean(axis=0)) for i in (0, 1)]
        near = int(parts[1] @ enroll > parts[0] @ enroll)  # (k-means may carry the enrollment's seed to either part)
        keep_c, new_c = parts[near], parts[1 - near]
        # another voice: the enrollment sits nearer one part by at least half the parts' distance (one voice split
        # by a music bed or a bad channel leaves the enrollment about as near both parts)
        if float(keep_c @ enroll - new_c @ enroll) < 0.5 * (1.0 - float(keep_c @ new_c)):
            break
        if units is not None:
            us = units.split_silhouette(members, km.labels_)
            if us is None or us < min_silhouette:
                break
        new = labels.copy()
        new[members[km.labels_ != near]] = labels.max() + 1
        labels, k = _relabel(new)
        cents = _centroids(embs, labels, k)
    return labels, cents


@dataclass
class Units:
    """The episode's `units` embedded whole: each stretch of one voice (as far as the segmentation model hears) of
    at least `MIN_S` seconds, as one embedding in the windows' space. Speaker verification errs far less on 2-10 s
    of speech than on a 1.5 s window, so these are the steadier evidence of how many voices an episode holds; the
    windows still place the boundaries."""

    embs: np.ndarray  # (m, d) unit embeddings
    seconds: np.ndarray  # (m,) each unit's length
    of_window: np.ndarray  # (n_windows,) the unit each window lies in; -1: a unit too short to be embedded

    # 2 s, not 1 s: units of 1-2 s (backchannel episodes are made of them) judged a merge of the co-host into the
    # target as readily as the windows do, and on two feeds the 1 s rule lowered purity (espeak 45 s backchannels
    # 1.000 -> 0.691, a held-out feed 0.996 -> 0.787). With 2 s no feed's purity fell below the rule switched off;
    # the cost is recall where the co-host's turns are all shorter (the CI feed's crosstalk, 0.972 -> 0.649):
    # purity first (benchmarks/RESULTS.md, corpus purity, seventh session)
    MIN_S = 2.0

    @staticmethod
    def spans(regions: list[tuple[float, float]], min_s: float = MIN_S) -> list[tuple[float, float]]:
        """The regions (`units`) long enough to be embedded whole."""
        return [(float(a), float(b)) for a, b in regions if b - a >= min_s]

    @classmethod
    def of(cls, regions: list[tuple[float, float]], wins: list[tuple[float, float]], embs: np.ndarray,
           min_s: float = MIN_S) -> Units:
        """`embs`: one embedding per `spans(regions, min_s)`, in order; `wins`: the `windows` over `regions`."""
        spans = cls.spans(regions, min_s)
        of_window = np.full(len(wins), -1, dtype=np.int64)
        j = 0
        for i, (a, b) in enumerate(wins):
            while j < len(spans) and spans[j][1] < b - 1e-6:
                j += 1
            if j < len(spans) and spans[j][0] - 1e-6 <= a:
                of_window[i] = j
        return cls(unit(embs) if len(spans) else np.zeros((0, 1), np.float32),
                   np.array([b - a for a, b in spans], dtype=np.float64), of_window)

    def _majority(self, labels: np.ndarray,
                  windows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per unit: (the label most of its windows carry or -1, that label's share of the unit's windows, the
        share of its windows that count). `windows`: only these windows count (indices; `labels` is theirs)."""
        ow = self.of_window if windows is None else self.of_window[windows]
        lab = np.full(len(self.seconds), -1, dtype=np.int64)
        share, counted = np.zeros(len(self.seconds)), np.zeros(len(self.seconds))
        for u in range(len(self.seconds)):
            m = ow == u
            if m.any():
                counts, total = np.bincount(labels[m]), (self.of_window == u).sum()
                lab[u], share[u], counted[u] = int(counts.argmax()), counts.max() / total, m.sum() / total
        return lab, share, counted

    def one_voice(self, labels: np.ndarray, agree: float = 0.8) -> np.ndarray:
        """Units whose windows mostly (`agree`) fall in one cluster of `labels`: the segmentation model misses
        changes between two similar voices, and a unit that holds both embeds as neither."""
        return self._majority(labels)[1] >= agree

    def silhouette(self, labels: np.ndarray, use: np.ndarray) -> float | None:
        """The clustering `labels` (per window) judged on the units `use`, each labelled by most of its windows:
        their cosine silhouette, weighted by seconds (None when they show fewer than two clusters)."""
        lab = self._majority(labels)[0]
        m = use & (lab >= 0)
        return _silhouette(self.embs[m], lab[m], self.seconds[m])

    def split_silhouette(self, members: np.ndarray, parts: np.ndarray) -> float | None:
        """The split `parts` (0/1 per window of `members`) judged on the units most of whose windows are members
        (None when fewer than three units, or one part has none)."""
        lab, _, counted = self._majority(parts, members)
        m = (lab >= 0) & (counted >= 0.5)
        if m.sum() < 3:
            return None
        return _silhouette(self.embs[m], lab[m], self.seconds[m])


def _silhouette(x: np.ndarray, labels: np.ndarray, weight: np.ndarray) -> float | None:
    """Cosine silhouette with weighted points (each distance mean weighted, then the mean of the points' values;
    a point alone in its cluster scores 0, as in scikit-learn). None with fewer than two clusters or no point
    sharing a cluster."""
    ks = np.unique(labels)
    if len(ks) < 2 or len(labels) <= len(ks):
        return None
    d = 1.0 - x @ x.T
    s = np.zeros(len(labels))
    for i in range(len(labels)):
        own = labels == labels[i]
        own[i] = False
        if not own.any():
            continue
        a = float(np.average(d[i, own], weights=weight[own]))
        b = min(float(np.average(d[i, labels == c], weights=weight[labels == c])) for c in ks if c != labels[i])
        s[i] = (b - a) / max(a, b, 1e-9)
    return float(np.average(s, weights=weight))


def recount(embs: np.ndarray, enroll: np.ndarray, labels: np.ndarray, units: Units, *, max_speakers: int = 6,
            max_points: int = 1500, min_silhouette: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """The number of speakers chosen again on the units embedded whole: of `cluster`'s k-means partitions of the
    windows, the one whose silhouette on the units is best (the windows' silhouette for a partition the units do
    not tell apart: a voice without a unit of its own). Only units that the windows' clustering `labels` puts in
    one cluster judge (`Units.one_voice`). Then `split_target`, gated by the units too. Returns (labels, centroids).
    """
    use = units.one_voice(labels)
    best, best_labels = -np.inf, None
    for wsil, cents in _candidates(embs, enroll, max_speakers, max_points):
        lab = _relabel(np.argmax(embs @ cents.T, axis=1))[0]
        us = units.silhouette(lab, use)
        score = wsil if us is None else us
        if score > best:
            best, best_labels = score, lab
    if best_labels is None or best < min_silhouette:
        best_labels = np.zeros(len(embs), dtype=np.int64)
    labels, k = _relabel(best_labels)
    return split_target(embs, enroll, labels, _centroids(embs, labels, k), units=units)


@dataclass
class EpisodeSpeakers:
    """The speakers found in one episode and which of them is the target."""

    labels: np.ndarray  # (n_windows,) cluster of each window
    centroids: np.ndarray  # (k, d) fp32 unit
    enroll_sims: list[float]  # cosine of each cluster centroid to the enrollment centroid
    target: int | None  # the target's cluster, None when the enrollment matches none of them
    spread: list[float] = field(default_factory=list)  # lowest of each cluster's members' cosine to it

    @classmethod
    def find(cls, embs: np.ndarray, enroll: np.ndarray, units: Units | None = None,
             **kw: object) -> EpisodeSpeakers:
        """Cluster `embs` and pick the target cluster by the enrollment centroid `enroll`; with `units` (the
        episode's units embedded whole), the count is chosen again on them (`recount`)."""
        embs = unit(embs)
        enroll = unit(enroll)
        labels, cents = cluster(embs, enroll, **kw)  # type: ignore[arg-type]
        labels, cents = split_target(embs, enroll, labels, cents)
        if units is not None and len(units.seconds) and len(embs) >= 4:  # (fewer windows: one speaker, as `cluster`)
            labels, cents = recount(embs, enroll, labels, units, **kw)  # type: ignore[arg-type]
        sims = [float(c @ enroll) for c in cents]
        spread = [float(np.quantile(embs[labels == i] @ cents[i], 0.0)) for i in range(len(cents))]
        # the nearest cluster is the target's. (Requiring the enrollment to look like a member of it - its cosine
        # within the cluster's own spread - was tried: a music bed under the speech put the clean enrollment
        # outside every cluster and emptied the episode. An episode without the target therefore gives its nearest
        # voice; `FilterConfig.min_speaker_sim` is the optional absolute floor for feeds where that can happen.)
        target = int(np.argmax(sims)) if sims else None
        return cls(labels, cents, sims, target, spread)


def target_label(label_embs: dict[str, np.ndarray], enroll: np.ndarray) -> tuple[str | None, dict[str, float]]:
    """Which of a diarizer's speakers (one embedding per label, e.g. pyannote's) is the target: the one nearest the
    enrollment centroid, relative to the episode's other speakers, never by a fixed cosine (a guest may embed
    closer to the enrollment than a fixed threshold, and the target farther, on another microphone). Returns
    (label or None when there are no speakers, cosine of each label to the enrollment)."""
    enroll = unit(enroll)
    sims = {lab: float(unit(e) @ enroll) for lab, e in label_embs.items()}
    return (max(sims, key=sims.__getitem__) if sims else None), sims


# the reason `decide` gives a window nearer another of the episode's speakers names that speaker's cluster;
# `feed_target_clusters` reads it back from the turns (change one, change both)
_OTHER_CLUSTER = re.compile(r"^other speaker \(cluster (\d+),")


def decide(embs: np.ndarray, sp: EpisodeSpeakers, *, margin: float = 0.3,
           outlier_mad: float = 3.5) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per window: (is_target (n,) bool, score (n,) fp32, reason per window ('' for target windows)).

    score = cos(w, target) - max over other speakers cos(w, other), divided by the distance between the target and
    that nearest other speaker (1 - cos of their centroids); a window is the target's when score >= `margin` and
    its cosine to the target centroid is not a low outlier (median - `outlier_mad` x 1.4826 MAD) among the windows
    nearest the target (overlap, backchannels over the target).
    """
    embs = unit(embs)
    n = len(embs)
    if sp.target is None or n == 0:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=np.float32), ["target not among the episode's speakers"] * n
    c = sp.centroids
    sims = embs @ c.T  # (n, k)
    t = sp.target
    st = sims[:, t]
    reasons = [""] * n
    if len(c) > 1:
        others = [i for i in range(len(c)) if i != t]
        so = sims[:, others]
        j = np.argmax(so, axis=1)
        gap = np.maximum(1.0 - (c[[others[x] for x in j]] @ c[t]), 1e-3)
        score = ((st - so[np.arange(n), j]) / gap).astype(np.float32)
    else:
        others, j, score = [], np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.float32)
    keep = score >= margin
    near = st[np.argmax(sims, axis=1) == t]
    if near.size >= 8:
        med = float(np.median(near))
        mad = float(np.median(np.abs(near - med))) * 1.4826
        floor = med - outlier_mad * max(mad, 1e-3)
    else:
        floor = -np.inf
    for i in range(n):
        if not keep[i]:
            reasons[i] = (f"other speaker (cluster {others[j[i]]}, margin {score[i]:.2f} < {margin:g})"
                          if others else "other speaker")
        elif st[i] < floor:
            keep[i] = False
            reasons[i] = f"overlap/backchannel (cosine to target {st[i]:.2f} < its windows' floor {floor:.2f})"
    return keep, score, reasons


def timeline(wins: list[tuple[float, float]], verdicts: list[str], speech: list[tuple[float, float]],
             hop_s: float = HOP_S) -> list[tuple[float, float, str]]:
    """Map per-window verdicts (a label: "target", or a reject reason) onto time: inside each speech region,
    every window speaks for the hop-sized slot around its centre (the first and last window of a region reach the
    region's edges). Returns contiguous (start, end, verdict) runs; a change of verdict inside a region is a cut."""
    out: list[tuple[float, float, str]] = []
    wi = 0
    for s, e in speech:
        mine = []
        while wi < len(wins) and wins[wi][0] < e - 1e-9:
            if wins[wi][1] > s + 1e-9:
                mine.append(wi)
            wi += 1
        if not mine:
            continue
        centres = [(wins[i][0] + wins[i][1]) / 2 for i in mine]
        bounds = [s] + [(centres[k] + centres[k + 1]) / 2 for k in range(len(mine) - 1)] + [e]
        for k, i in enumerate(mine):
            a, b, v = bounds[k], bounds[k + 1], verdicts[i]
            if b - a <= 1e-9:
                continue
            if out and out[-1][2] == v and abs(out[-1][1] - a) < 1e-6:
                out[-1] = (out[-1][0], b, v)
            else:
                out.append((a, b, v))
    return out


def guard_changes(runs: list[tuple[float, float, str]], guard_s: float) -> list[tuple[float, float, str]]:
    """Shrink every "target" run of a `timeline` by `guard_s` where it touches another verdict without a pause;
    the time given up becomes its own run, with the reason. A run left shorter than `guard_s` is given up whole."""
    if guard_s <= 0:
        return list(runs)
    why = f"within {guard_s:g} s of a change of speaker without a pause"
    out: list[tuple[float, float, str]] = []
    for i, (a, b, v) in enumerate(runs):
        if v != "target":
            out.append((a, b, v))
            continue
        touch_before = i > 0 and runs[i - 1][2] != "target" and abs(runs[i - 1][1] - a) < 1e-6
        touch_after = i + 1 < len(runs) and runs[i + 1][2] != "target" and abs(runs[i + 1][0] - b) < 1e-6
        s = a + guard_s if touch_before else a
        e = b - guard_s if touch_after else b
        if (touch_before or touch_after) and e - s < guard_s:
            out.append((a, b, why))
            continue
        if s > a:
            out.append((a, s, why))
        out.append((s, e, "target"))
        if e < b:
            out.append((e, b, why))
    return out


def cut_overlap(runs: list[tuple[float, float, str]], overlap: list[tuple[float, float]],
                pad_s: float = 0.1) -> list[tuple[float, float, str]]:
    """Give up the "target" runs' time inside overlapped speech (each region widened by `pad_s`); that time becomes
    its own run with the reason. Other runs are unchanged."""
    if not overlap:
        return list(runs)
    return _give_up(runs, intervals.union([(a - pad_s, b + pad_s) for a, b in overlap]),
                    "overlapped speech (two voices at once)")


def _give_up(runs: list[tuple[float, float, str]], cut: list[tuple[float, float]],
             why: str) -> list[tuple[float, float, str]]:
    """The "target" runs' time inside `cut` (sorted, disjoint) becomes its own runs with the reason `why`."""
    out: list[tuple[float, float, str]] = []
    for a, b, v in runs:
        if v != "target":
            out.append((a, b, v))
            continue
        pieces = [(x, y, "target") for x, y in intervals.subtract([(a, b)], cut)]
        pieces += [(x, y, why) for x, y in intervals.intersect([(a, b)], cut)]
        out.extend(sorted(pieces))
    return out


def overlap_tails(regions: list[tuple[float, float]], overlap: list[tuple[float, float]], *,
                  max_s: float = WIN_S, tol_s: float = 1e-3) -> list[tuple[float, float, str]]:
    """The `units` shorter than `max_s` that touch overlapped speech, as (start, end, side): side "start" when the
    overlap ends where the unit starts, "end" when it starts where the unit ends ("both": on each side). Such a
    stretch (the rest of the target's sentence after a co-host's "yeah") is one window, shorter than the ones the
    target's outlier floor is measured on, and its overlap edge is only as sure as the segmentation model's."""
    out = []
    for a, b in regions:
        if b - a >= max_s:
            continue
        after = any(abs(a - y) < tol_s for _, y in overlap)
        before = any(abs(b - x) < tol_s for x, _ in overlap)
        if after or before:
            out.append((a, b, "both" if after and before else "start" if after else "end"))
    return out


def spare_tails(wins: list[tuple[float, float]], keep: np.ndarray, score: np.ndarray, reasons: list[str],
                tails: list[tuple[float, float, str]], margin: float
                ) -> tuple[np.ndarray, list[str], list[tuple[float, float, str]]]:
    """`decide`'s verdicts with the `overlap_tails` units judged by the margin alone: a tail's window that `decide`
    dropped though its margin passed (the outlier floor of the full-length windows alone dropped it) is the
    target's. Returns (keep, reasons, the tails spared so: `guard_tails` guards them)."""
    at = {(round(a, 6), round(b, 6)) for a, b, _ in tails}
    saved = np.array([(round(a, 6), round(b, 6)) in at for a, b in wins], dtype=bool) & ~keep & (score >= margin)
    spared = {(round(a, 6), round(b, 6)) for (a, b), s in zip(wins, saved, strict=True) if s}
    return (keep | saved, ["" if s else r for s, r in zip(saved, reasons, strict=True)],
            [t for t in tails if (round(t[0], 6), round(t[1], 6)) in spared])


def guard_tails(runs: list[tuple[float, float, str]], tails: list[tuple[float, float, str]],
                guard_s: float) -> list[tuple[float, float, str]]:
    """Give up `guard_s` of each "target" run on the overlap side of the `overlap_tails` unit it lies in (the same
    guard as at a change of speaker without a pause); that time becomes its own run, with the reason."""
    if guard_s <= 0 or not tails:
        return list(runs)
    cut = [(a, min(b, a + guard_s)) for a, b, side in tails if side in ("start", "both")]
    cut += [(max(a, b - guard_s), b) for a, b, side in tails if side in ("end", "both")]
    return _give_up(runs, intervals.union(cut),
                    f"within {guard_s:g} s of overlapped speech, in a stretch shorter than one speaker window")


def change_points(active: np.ndarray, chunk_starts: np.ndarray, frame_centres: np.ndarray, chunk_s: float, *,
                  tol_s: float = 0.25, edge_s: float = 0.5, min_support: float = 0.5) -> list[float]:
    """Times where one voice hands over to another, from a speaker-segmentation model's sliding windows.

    `active` (chunks, frames, local speakers) bool: who is active in each frame of each window (pyannote's
    segmentation, multi-label); `chunk_starts` (chunks,) s; `frame_centres` (frames,) s from a window's start.
    Inside each window, a change is the midpoint between a run of frames where local speaker A talks alone and the
    next run where another local speaker B does (silence and overlap in between are skipped). A window labels its
    speakers on its own, so only the change times are compared across windows: a change is kept where at least
    `min_support` of the windows that see that time (more than `edge_s` from their edges) put one within `tol_s`;
    kept times within `tol_s` of each other are one change (their median).
    """
    cands: list[tuple[float, int]] = []
    step = float(frame_centres[1] - frame_centres[0]) if len(frame_centres) > 1 else 0.0
    for c in range(active.shape[0]):
        alone = active[c].sum(axis=1) == 1
        lab = np.where(alone, active[c].argmax(axis=1), -1)
        idx = np.flatnonzero(lab >= 0)
        if idx.size < 2:
            continue
        brk = np.flatnonzero(lab[idx[1:]] != lab[idx[:-1]])  # run of one speaker ends at idx[b], next starts idx[b+1]
        for b in brk:
            mid = (idx[b] + idx[b + 1]) / 2
            cands.append((float(chunk_starts[c] + frame_centres[0] + step * mid), c))
    if not cands:
        return []
    cands.sort()
    times = np.array([t for t, _ in cands])
    owner = np.array([c for _, c in cands])
    starts = np.asarray(chunk_starts, dtype=np.float64)  # sorted: the windows that see t are one index range
    kept = []
    for t in times:
        lo = int(np.searchsorted(starts, t - chunk_s + edge_s, side="left"))
        hi = int(np.searchsorted(starts, t - edge_s, side="right"))
        if hi <= lo:
            continue
        a, b = np.searchsorted(times, [t - tol_s, t + tol_s + 1e-9])
        near = owner[a:b]
        if np.unique(near[(near >= lo) & (near < hi)]).size / (hi - lo) >= min_support:
            kept.append(float(t))
    groups: list[list[float]] = []
    for t in kept:
        if groups and t - groups[-1][-1] <= tol_s:
            groups[-1].append(t)
        else:
            groups.append([t])
    return [float(np.median(g)) for g in groups]


def units(speech: list[tuple[float, float]], overlap: list[tuple[float, float]],
          changes: list[float]) -> list[tuple[float, float]]:
    """The speech regions less overlapped speech, cut at every change of speaker inside them: stretches of one
    voice (as far as the segmentation model can tell), the spans the speaker windows are laid over."""
    out: list[tuple[float, float]] = []
    for a, b in intervals.subtract(intervals.union(speech), intervals.union(overlap)):
        cuts = [a] + [t for t in changes if a + 1e-3 < t < b - 1e-3] + [b]
        out.extend(zip(cuts[:-1], cuts[1:], strict=False))
    return out


def _outlier_gap(ref_scores: list[float], mad_k: float, min_gap: float) -> tuple[float, float]:
    """(median of the reference episodes' scores, how far below it an episode is an outlier: `mad_k` scaled MADs,
    at least `min_gap`)."""
    vals = np.asarray(ref_scores, dtype=np.float64)
    med = float(np.median(vals))
    return med, max(mad_k * float(np.median(np.abs(vals - med))) * 1.4826, min_gap)


FEED_MIN_EPISODES = 3  # fewer episodes with a target voice: the feed check judges none (`feed_outliers`)


def feed_outliers(voices: dict[str, np.ndarray], enroll: np.ndarray | None = None, *,
                  min_episodes: int = FEED_MIN_EPISODES,
                  mad_k: float = 5.0, min_gap: float = 0.05) -> tuple[dict[str, float], dict[str, float]]:
    """Episodes whose kept voice is not the feed's target voice (the target absent: a guest host, a trailer).

    Per episode, the diarizer keeps the voice nearest the enrollment, so an episode without the target keeps its
    nearest other voice. Across a feed the target is one voice heard on one show's channel, so each episode's voice
    (`voices`: its target speaker's centroid, any positive scale; empty or zero: nothing kept, not judged) is
    compared with the reference episodes' voices: its score is the median of those cosines (an episode whose own
    target cluster also holds another voice moves only its own pairs, where a leave-one-out mean of the feed would
    move every score). The reference is the half of the episodes nearest the enrollment centroid `enroll` (all of
    them without it): where the target hosts fewer episodes than another voice (a network feed, a co-host who
    hosts most weeks), the feed's majority is that other voice, and the enrollment says which voice is wanted.
    The lowest score is an outlier when it is below the reference episodes' median score by more than `mad_k`
    scaled MADs and by at least `min_gap` (with CAM++ one voice's episodes scored 0.93-0.98, the absent episodes'
    0.86-0.90 on espeak's close co-host: benchmarks/RESULTS.md); outliers are removed one at a time, worst first,
    while at least `min_episodes` remain. Returns (every judged episode's score, the outliers').
    """
    vecs = {k: unit(np.asarray(v, dtype=np.float64)) for k, v in voices.items()
            if np.asarray(v).size and np.any(np.asarray(v))}
    e = None if enroll is None else unit(np.asarray(enroll, dtype=np.float64))
    out: dict[str, float] = {}
    scores: dict[str, float] = {}
    while len(vecs) >= min_episodes:
        keys = list(vecs)
        m = np.stack([vecs[k] for k in keys])
        sims = m @ m.T
        ref = (np.arange(len(keys)) if e is None
               else np.argsort(-(m @ e), kind="stable")[: max(2, (len(keys) + 1) // 2)])
        cur = {k: float(np.median(sims[i, [j for j in ref if j != i]])) for i, k in enumerate(keys)}
        scores.update({k: v for k, v in cur.items() if k not in out})
        med, gap = _outlier_gap([cur[keys[j]] for j in ref], mad_k, min_gap)
        worst = min(cur, key=cur.__getitem__)
        if cur[worst] >= med - gap:
            break
        out[worst] = cur[worst]
        del vecs[worst]
    return {k: round(v, 4) for k, v in scores.items()}, {k: round(v, 4) for k, v in out.items()}


@dataclass
class FeedVoices:
    """The feed's voices: its target voice, and the voices its episodes heard that are not the target.

    Per episode the decisions are relative to that episode's speakers; a voice the episode could not tell from the
    target (a close co-host merged into the target's cluster, a short episode's noisy centroid) goes unseen there.
    A real feed repeats its people (co-hosts, regular guests, the ad reader), and another episode may have heard the
    same voice as a speaker of its own. `others` are those speakers (each episode's non-target clusters with at
    least `min_talk_s`) that recur (another episode has a speaker nearer to it than either is to the target), in
    the speaker model's own space, less any as near the feed's target voice as the least
    target-like of the episodes judged to have the target (`judged`; a piece of the target that one episode's
    clustering split off is still the target). `target` is the mean of the reference episodes' target voices (the
    episodes nearest the enrollment). Both are unit vectors.
    """

    target: np.ndarray
    others: list[tuple[str, str, np.ndarray]]  # (episode, speaker label, unit vector)
    floor: float = -1.0  # the least target-like judged episode's target voice: cosine to `target`

    @classmethod
    def of(cls, targets: dict[str, np.ndarray], speakers: dict[str, dict[str, tuple[np.ndarray, float]]], *,
           judged: dict[str, np.ndarray] | None = None, min_talk_s: float = 2.0) -> FeedVoices | None:
        """`targets`: episode -> its target voice (the reference episodes); `judged`: the same for every episode
        judged to have the target (default: `targets`); `speakers`: episode -> {label: (centroid, talk seconds)}
        of its other speakers. None without two target voices."""
        vs = [unit(np.asarray(v, dtype=np.float64)) for v in targets.values() if np.asarray(v).size]
        if len(vs) < 2:
            return None
        t = unit(np.mean(np.stack(vs), axis=0))
        js = [unit(np.asarray(v, dtype=np.float64)) for v in (judged or targets).values() if np.asarray(v).size]
        floor = min(float(v @ t) for v in js + vs)  # the least target-like target episode's voice
        cand = []
        for ep, labs in speakers.items():
            for lab, (c, talk) in labs.items():
                c = unit(np.asarray(c, dtype=np.float64))
                if talk >= min_talk_s and float(c @ t) < floor:
                    cand.append((ep, lab, c))
        # a voice of the feed recurs: another episode heard it too, nearer to it than either is to the target (a
        # cluster that mixes the target with another voice, say in crosstalk, is heard once and judges nothing)
        if not cand:
            return cls(t, [], floor)
        m = np.stack([c for _, _, c in cand])  # (all at once: a feed of hundreds of episodes has thousands)
        to_t = m @ t
        eps = np.asarray([ep for ep, _, _ in cand], dtype=object)
        recurs = ((m @ m.T) > np.maximum(to_t[:, None], to_t[None, :])) & (eps[:, None] != eps[None, :])
        return cls(t, [x for x, r in zip(cand, recurs.any(axis=1), strict=True) if r], floor)

    def nearest_other(self, emb: np.ndarray, episode: str) -> tuple[float, tuple[str, str] | None, np.ndarray | None]:
        """The cosine of `emb` to the nearest voice that another episode heard, with its (episode, label)."""
        best, i = self._nearest(unit(np.asarray(emb, dtype=np.float64))[None, :], episode)
        if i[0] < 0:
            return -np.inf, None, None
        ep, lab, c = self.others[i[0]]
        return float(best[0]), (ep, lab), c

    def _nearest(self, embs: np.ndarray, episode: str) -> tuple[np.ndarray, np.ndarray]:
        """For unit rows `embs`: (cosine to the nearest voice another episode heard, its index in `others`; -1 none)."""
        n = len(embs)
        usable = [k for k, (ep, _, _) in enumerate(self.others) if ep != episode]
        if not usable:
            return np.full(n, -np.inf), np.full(n, -1)
        sims = embs @ np.stack([self.others[k][2] for k in usable]).T
        j = np.argmax(sims, axis=1)  # (the first of equal maxima, as a loop keeping the strictly greater would)
        return sims[np.arange(n), j], np.asarray(usable)[j]

    def margins(self, embs: np.ndarray, episode: str) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
        """`margin` for many embeddings of one episode at once (NaN and None where no voice judges)."""
        e = unit(np.asarray(embs, dtype=np.float64).reshape(len(embs), -1))
        best, idx = self._nearest(e, episode)
        out = np.full(len(e), np.nan)
        who: list[tuple[str, str] | None] = [None] * len(e)
        for r, k in enumerate(idx):
            if k >= 0:
                ep, lab, c = self.others[k]
                out[r] = (float(e[r] @ self.target) - best[r]) / max(1.0 - float(c @ self.target), 1e-3)
                who[r] = (ep, lab)
        return out, who

    def margin(self, emb: np.ndarray, episode: str) -> tuple[float | None, tuple[str, str] | None]:
        """(cos to the target voice - cos to the nearest other voice) / the distance between those two voices, as
        the filter's `min_speaker_margin` measures a segment against its own episode's speakers; None: no voice."""
        m, who = self.margins(np.asarray(emb, dtype=np.float64)[None, :], episode)
        return (None, None) if who[0] is None else (float(m[0]), who[0])


def feed_units(units: list[tuple[float, float]], embs: np.ndarray, feed: FeedVoices, episode: str, *,
               margin: float) -> list[tuple[float, float, str]]:
    """The units of `episode` (stretches of one voice, each embedded whole: `embs`, the speaker model's space)
    nearer another voice of the feed than the feed's target voice by more than `margin` of the distance between
    the two (`FeedVoices.margin` below -`margin`), as (start, end, reason). A unit embeds a voice more steadily
    than a 1.5 s window, and cutting it before the target's speech is cut into utterances loses only it, where the
    same judgement on a whole kept segment gives up the target's speech around it too."""
    out = []
    ms, whos = feed.margins(np.asarray(embs, dtype=np.float64), episode) if len(units) else (np.zeros(0), [])
    for (a, b), m, who in zip(units, ms, whos, strict=True):
        if who is not None and m < -margin:
            out.append((float(a), float(b), f"nearer another voice of the feed (episode {who[0]}'s "
                        f"{'kept voice' if who[1] == 'kept' else 'speaker ' + who[1]}) than the feed's target "
                        f"voice, heard as one unit of {b - a:.1f} s (margin {m:.2f} < -{margin:g})"))
    return out


SPLIT_MIN_FLOOR = 0.8  # `feed_target_clusters`: only where every judged episode's target voice is this near the feed's


def feed_target_clusters(dia: dict, feed: FeedVoices, episode: str, *, margin: float
                         ) -> dict[str, list[tuple[float, float, str]]]:
    """An episode's speakers that are the target after all: a cluster its diarize split off the target's (short
    turns between a co-host's backchannels, a music bed) whose centroid is nearer the feed's target voice than
    every other voice of the feed by at least `margin` of the distance between the two (`FeedVoices.margins`), and
    that talks less than the episode's target speaker: a one-off guest whose voice is near the target's is no
    other voice of the feed to be measured against, and talks as a main speaker. Returns each such speaker's label
    with the turns given to it, as (start, end, reason). Only where the feed knows its target voice (every judged
    episode's within `SPLIT_MIN_FLOOR` of it): a feed whose target episodes disagree has no voice to hold a
    cluster to."""
    if feed.floor < SPLIT_MIN_FLOOR or not feed.others:
        return {}
    talk = {x["label"]: x.get("talk_s", 0.0) for x in dia.get("speakers", [])}
    out: dict[str, list[tuple[float, float, str]]] = {}
    for label, c in (dia.get("centroids") or {}).items():
        if label == dia.get("target_label") or not label.startswith("S"):
            continue
        if talk.get(label, 0.0) >= talk.get(dia.get("target_label"), 0.0):
            continue  # a main speaker of its episode (an interview's guest), never a piece split off the target
        m, who = feed.margins(np.asarray(c, dtype=np.float64)[None, :], episode)
        if who[0] is None or not m[0] >= margin:
            continue
        why = (f"the target's after all: its speaker {label} is nearer the feed's target voice than any other voice "
               f"of the feed (margin {m[0]:.2f} >= {margin:g})")
        for t in dia.get("turns", []):
            hit = _OTHER_CLUSTER.match(t.get("reason") or "")
            if not t["target"] and hit and f"S{hit.group(1)}" == label:
                out.setdefault(label, []).append((float(t["start"]), float(t["end"]), why))
    return out


@dataclass
class FeedJudgement:
    """What `judge_feed` decided: every judged episode's score, the episodes whose kept voice is not the feed's
    target (id -> reason) and, in the others, the kept segments nearer another voice of the feed ((id, key) ->
    reason)."""

    scores: dict[str, float] = field(default_factory=dict)
    episodes: dict[str, str] = field(default_factory=dict)
    segments: dict[tuple[str, Any], str] = field(default_factory=dict)
    # the feed's other voices that judged: (episode, speaker label or "kept", cosine to the feed's target voice)
    voices: list[tuple[str, str, float]] = field(default_factory=list)
    # outliers kept after all (id -> why): their voice is the target's nearest, and no second voice was heard
    rescued: dict[str, str] = field(default_factory=dict)
    # the feed's voices it judged with (None: fewer than two target voices, or `other_voices` off)
    feed: FeedVoices | None = None


def feed_voices(episodes: dict[str, dict], enroll: np.ndarray | None, *, mad_k: float = 5.0, min_gap: float = 0.05,
                min_talk_s: float = 2.0, quiet_overlap: float | None = None,
                ) -> tuple[dict[str, float], dict[str, float], list[str], FeedVoices | None]:
    """The feed's voices from its episodes (`judge_feed`'s `episodes`: "voice", "others", "overlap"): (every judged
    episode's score, the `feed_outliers`, the reference episodes (the judged half nearest the enrollment), the
    `FeedVoices` with the outliers' kept voices among the other voices; None without two target voices).

    With `quiet_overlap`, an outlier in which more than that fraction of the speech was heard as overlapped does
    not lend its kept voice: it is the target with another voice over it, a mixture that sits near the target's
    voice (a 30-minute episode's: cosine 0.918) and out-voted the target's own episodes under the same music bed
    (benchmarks/RESULTS.md, corpus purity, twelfth session). A quiet outlier's (a guest host's) still counts."""
    voices = {k: np.asarray(e.get("voice", []), dtype=np.float64) for k, e in episodes.items()}
    scores, out = feed_outliers(voices, enroll, mad_k=mad_k, min_gap=min_gap)
    judged = [k for k in scores if k not in out]
    e = None if enroll is None else unit(np.asarray(enroll, dtype=np.float64))
    ref = judged if e is None else sorted(judged, key=lambda k: -float(unit(voices[k]) @ e))
    ref = ref[: max(2, (len(ref) + 1) // 2)]
    others = {k: dict(ep.get("others") or {}) for k, ep in episodes.items()}
    for k in out:  # an outlier's kept voice is a voice of the feed that is not the target
        ov = episodes[k].get("overlap")
        if quiet_overlap is None or ov is None or ov <= quiet_overlap:
            others[k]["kept"] = (voices[k], float("inf"))
    feed = FeedVoices.of({k: voices[k] for k in ref}, others, judged={k: voices[k] for k in judged},
                         min_talk_s=min_talk_s)
    return scores, out, ref, feed


def judge_feed(episodes: dict[str, dict], enroll: np.ndarray | None, *, other_voices: bool = True,
               margin: float = 0.0, min_talk_s: float = 2.0, rescue_max_overlap: float | None = None,
               mad_k: float = 5.0, min_gap: float = 0.05) -> FeedJudgement:
    """The feed-level check of what each episode kept (the target absent; another voice merged into the target's).

    `episodes`: id -> {"voice": the target speaker's centroid (empty: nothing kept), "others": {label: (centroid,
    talk seconds)} of its other speakers, "segments": [(key, embedding)] of its kept segments}, all in the speaker
    model's own space. First `feed_outliers` (an episode whose voice scores far below the reference episodes').
    With `other_voices`, then `FeedVoices` (the target's voice over the reference episodes, and the voices the
    episodes heard that are not it, the outliers' kept voices among them): an episode whose kept voice is nearer
    another episode's voice than its own score to the reference is not the target's (the target absent, its
    nearest voice kept: a co-host heard as a speaker of its own elsewhere); a kept segment whose margin to the
    target voice over the nearest such voice is below `margin` is dropped (a turn of a co-host the episode could
    not tell from the target).

    With `rescue_max_overlap`, an outlier is kept after all (its segments judged like the others') when nothing
    but its channel or its short turns explains its low score: its voice is nearer the feed's target voice than
    every other voice of the feed, its score is within twice the outlier gap of the reference episodes' median,
    and at most that fraction of its speech was heard as overlapped ("overlap" in its entry; unknown: not kept).
    An outlier with overlapped speech stays out: the same low score is what a co-host's backchannels inside its
    kept speech give, and the embeddings cannot tell those apart (benchmarks/RESULTS.md, corpus purity); and its
    kept voice (the target with a voice over it) is not among the feed's other voices (`feed_voices`'
    `quiet_overlap`), where an outlier's without overlap (a guest host's) is.
    """
    scores, out, ref, feed = feed_voices(episodes, enroll, mad_k=mad_k, min_gap=min_gap, min_talk_s=min_talk_s,
                                         quiet_overlap=rescue_max_overlap)
    voices = {k: np.asarray(e.get("voice", []), dtype=np.float64) for k, e in episodes.items()}
    floor = min((s for x, s in scores.items() if x not in out), default=0.0)
    j = FeedJudgement(scores=scores, episodes={
        k: f"not the feed's voice (this episode's target voice: median cosine {v:.3f} to the episodes nearest the "
           f"enrollment, where the others are at >= {floor:.3f}; the target is likely absent, or its cluster here "
           "also took another voice's turns)" for k, v in out.items()})
    if not other_voices or feed is None:
        return j
    judged = [k for k in scores if k not in out]
    j.feed = feed
    j.voices = [(ep, lab, round(float(c @ feed.target), 4)) for ep, lab, c in feed.others]
    if rescue_max_overlap is not None and out:
        med, gap = _outlier_gap([scores[k] for k in ref], mad_k, min_gap)
        band = med - 2 * gap
        for k in out:  # (an outlier with overlapped speech lent no kept voice: `feed_voices`' `quiet_overlap`)
            best, who, _ = feed.nearest_other(voices[k], k)
            t = float(unit(voices[k]) @ feed.target)
            ov = episodes[k].get("overlap")
            if ov is not None and ov <= rescue_max_overlap and scores[k] >= band and t > best:
                del j.episodes[k]
                j.rescued[k] = (f"kept although its score {scores[k]:.3f} is low: its voice is nearer the feed's "
                                f"target voice (cosine {t:.3f}) than any other voice of the feed "
                                f"({best:.3f}), within twice the outlier gap (>= {band:.3f}), and "
                                f"{100 * ov:.1f} % of its speech overlapped")
    for k in judged:
        best, who, _ = feed.nearest_other(voices[k], k)
        if who is not None and best > scores[k]:
            j.episodes[k] = (f"not the feed's voice (this episode's target voice is nearer a voice episode {who[0]} "
                             f"heard as {'its kept voice' if who[1] == 'kept' else 'speaker ' + who[1]} (cosine "
                             f"{best:.3f}) than the feed's target voice (median cosine {scores[k]:.3f}))")
    for k, ep in episodes.items():
        if k in j.episodes or k not in scores:
            continue
        segs = ep.get("segments") or []  # judged episodes' and rescued ones' kept segments
        ms, whos = feed.margins(np.stack([np.asarray(e, dtype=np.float64) for _, e in segs]), k) if segs else ([], [])
        for (key, _), m, who in zip(segs, ms, whos, strict=True):
            if who is not None and m < margin:
                j.segments[(k, key)] = (f"nearer another voice of the feed (episode {who[0]}'s "
                                        f"{'kept voice' if who[1] == 'kept' else 'speaker ' + who[1]}) than the "
                                        f"feed's target voice (margin {m:.2f} < {margin:g})")
    return j


@dataclass
class SecondVoice:
    """A second voice `second_voice` found in a kept corpus: which kept segments are it (`other`), and the evidence."""

    other: np.ndarray  # bool per segment: the part farther from the enrollment
    silhouette: float  # of the two parts (cosine, weighted by seconds)
    enroll_sims: tuple[float, float]  # cosine of (the kept part's, the other part's) centroid to the enrollment
    parts_cos: float  # cosine between the two parts' centroids
    shared_episodes: int  # episodes with segments in both parts
    other_s: float  # seconds in the other part
    disjoint: bool = False  # the parts share fewer than `min_shared_episodes` episodes (`second_voice`'s `disjoint`)

    @property
    def preference(self) -> float:
        """How much nearer the enrollment the kept part is, as a fraction of the distance between the parts: near 0,
        the enrollment cannot tell the two voices apart and the choice of the kept one is weak."""
        return (self.enroll_sims[0] - self.enroll_sims[1]) / max(1.0 - self.parts_cos, 1e-6)


def second_voice(embs: np.ndarray, seconds: np.ndarray, episodes: list[str], enroll: np.ndarray, *,
                 min_silhouette: float = 0.3, min_shared_episodes: int = 2, min_part_s: float = 10.0,
                 max_points: int = 2000, disjoint: bool = False) -> SecondVoice | None:
    """Whether the kept corpus still holds two voices, and which kept segments are the one farther from the
    enrollment.

    Each episode decides relative to its own speakers, so a voice it could not tell from the target (a close
    co-host under the same music bed, merged into one cluster in every episode of a show) is kept in every episode
    alike, and the feed check, which compares episodes, sees one consistent voice. Whole kept utterances (1-15 s,
    the kept audio's embedding `embs`, the speaker model's space) embed a voice far more steadily than the 1.5 s
    windows diarize clusters, and the whole feed's are many: there the two voices part (benchmarks/RESULTS.md,
    corpus purity, thirteenth session). 2-means of the segments on the unit sphere (seeded with the enrollment and
    the segment least like it, and by k-means++: the split with the better silhouette) is a second voice when its
    silhouette (weighted by `seconds`) reaches `min_silhouette`, each part holds at least `min_part_s` seconds and
    three segments, and both parts are heard in at least `min_shared_episodes` episodes (one voice parted by a
    channel, say the episodes with a music bed and those without, parts by episode). The split is found on at most
    `max_points` segments (evenly strided: a corpus of many hours), then every segment goes to its nearer part.
    None otherwise. With `disjoint`, where no split passes so, the best one that passes all but the shared
    episodes is returned marked `disjoint`: two voices in separate episodes, or one voice on two channels, which
    only the enrollment may tell apart (the caller decides).
    """
    from sklearn.cluster import KMeans

    x = unit(np.asarray(embs, dtype=np.float64))
    secs = np.asarray(seconds, dtype=np.float64)
    if len(x) < 6:
        return None
    e = unit(np.asarray(enroll, dtype=np.float64))
    far = x[int(np.argmax(1.0 - x @ e))]
    pick = np.arange(0, len(x), max(1, int(np.ceil(len(x) / max_points))))
    xs, ws = x[pick], secs[pick]
    # seeded with the enrollment, and k-means++ (an enrollment about as near both voices draws every segment
    # to its seed); the split with the better silhouette
    cands: list[tuple[float, np.ndarray]] = []
    for km in (KMeans(n_clusters=2, init=np.stack([e, far]), n_init=1, max_iter=100),
               KMeans(n_clusters=2, n_init=10, max_iter=100, random_state=0)):
        lab = km.fit(xs).labels_
        if min(np.bincount(lab, minlength=2)) < 3:
            continue
        sil = _silhouette(xs, lab, ws)
        if sil is not None:
            cands.append((sil, unit(km.cluster_centers_)))
    cands.sort(key=lambda c: -c[0])
    eps = np.asarray(episodes, dtype=object)

    def split(sil: float, cents: np.ndarray) -> SecondVoice | None:
        lab = np.argmax(x @ cents.T, axis=1)
        if min(np.bincount(lab, minlength=2)) < 3:
            return None
        parts = [unit(x[lab == i].mean(axis=0)) for i in (0, 1)]
        near = int(parts[1] @ e > parts[0] @ e)
        other = lab != near
        if min(secs[other].sum(), secs[~other].sum()) < min_part_s or sil < min_silhouette:
            return None
        shared = len(set(eps[other]) & set(eps[~other]))
        return SecondVoice(other=other, silhouette=round(sil, 4),
                           enroll_sims=(round(float(parts[near] @ e), 4), round(float(parts[1 - near] @ e), 4)),
                           parts_cos=round(float(parts[0] @ parts[1]), 4), shared_episodes=shared,
                           other_s=round(float(secs[other].sum()), 2), disjoint=shared < min_shared_episodes)

    if not cands:
        return None
    first = split(*cands[0])  # the best split, as it has always been judged
    if first is not None and not first.disjoint:
        return first
    if not disjoint:
        return None
    later = (split(*c) for c in cands[1:])
    return next((sv for sv in (first, *later) if sv is not None and sv.disjoint), None)
