"""Corpus purity and recall on synthetic podcasts as real shows are, on the CPU path (not a test).

    python benchmarks/corpus_purity.py [--engines espeak flite festival recorded] [--seconds 45] [--episodes 2]

`festival` (Debian `festival`, `festvox-kallpc16k`, `festvox-kdlpc16k`, `festvox-us-slt-hts`; not in CI's image) is a
third engine, held out from every tuning: two recorded diphone voices as target and co-host.
`recorded` is real speech: pyannote.audio's bundled two-person conversation (`make_recorded_podcast`: as it is, and
under a music intro and bed), since synthetic voices separate more easily than real ones.
`fillets` is real recorded voices in the scenario podcasts: acted game dialogue from Debian (`fillets_bank`: two men
as target and co-host, two women as guest and ad reader; Dutch and Czech, so build it with `--set
'filters={"min_asr_confidence": 0, "min_sec_per_char": 0, "max_sec_per_char": 10}'`: the English recognizer hears
other languages poorly, and the score is who speaks when). The clips' words are their own, not the scenario's text.
`meeting-SHOW` is real meeting speech (AMI excerpts: the 30 s test clips in pyannote.audio's source distribution,
fetched from PyPI with `pip download --no-binary :all:` into `--work` the first time; 2-4 speakers a clip, overlaps
and backchannels as they come): a show (`MEETING_SHOWS`) is one annotated speaker's clips as episodes, clips without
them as episodes the target is absent from, and enrollment cut from the show (`make_meeting_podcast`).

For each speech engine (espeak-ng and flite, both offline, from Debian), `make_scenario_podcast` writes one feed
with `--episodes` episodes per scenario (a co-host whose voice embeds close to the target's, a guest, backchannels
over the target, crosstalk, a music intro/outro and bed, an ad break read by another voice, all of them
together, and an episode the target is absent from, where nothing should be kept), 64 kb/s mp3, served as RSS
from 127.0.0.1. `voicepipe corpus build`'s CPU path runs on it (`--no-separate --asr-backend pocketsphinx`, a
tiny random codec: plumbing only), one worker so step times do not overlap. Scores (`score_corpus`): purity =
target-only seconds kept / all speech seconds kept (silence neutral), recall = target-only seconds kept /
target-only seconds. Target: purity >= 0.99 and recall >= 0.8 in every scenario. Also prints each step's speed
(seconds of audio per wall second, x real time).
`--work DIR` keeps the podcasts (and the tiny codec) for the next run; the store is always fresh. Each build's
directory (`DIR/purity-ENGINE-*`) keeps its store and a `bench.json`; `--rerun BUILD_DIR ... [--set KEY=VALUE]`
builds those again on their own stores with other `CorpusParams` (only the steps whose inputs changed run: seconds),
the way a rule is measured on every stored build before it becomes a default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# real meeting speech (`meeting-SHOW`): the target, its clips, clips without it, the clip its enrollment is cut from
# (its three longest stretches alone; the clip may also be an episode), clips again under a music intro and bed
MEETING_SHOWS: dict[str, dict] = {
    "meo069": dict(target="MEO069", episodes=["trn00", "trn01"], absent=["trn02", "trn04", "trn05"],
                   enroll_from="trn03", music=["trn00"]),  # a man; a second man talks more than him in trn00
    "fee087": dict(target="FEE087", episodes=["trn07", "trn08"], absent=["trn05", "trn06", "trn09"],
                   enroll_from="trn07"),  # a woman, with another woman who talks as much in trn08
    "mee009": dict(target="MEE009", episodes=["dev00", "dev01"], absent=["trn00", "trn04", "tst01"],
                   enroll_from="dev00", music=["dev01"]),  # two men in every clip
    "fee083": dict(target="FEE083", episodes=["trn06", "trn09"], absent=["trn05", "trn07", "trn08"],
                   enroll_from="trn06"),  # a woman, talked over by a man for 13 s of trn09
    "feo070": dict(target="FEO070", episodes=["tst00", "tst01"], absent=["dev00", "trn05", "trn06"],
                   enroll_from="tst00"),  # four people at once, the target 11 s of tst00's 30
    # held out (twenty-fifth session): built after the rules were read off the five shows above
    "mee012": dict(target="MEE012", episodes=["dev00", "dev01"], absent=["trn00", "trn04", "tst00"],
                   enroll_from="dev00"),  # mee009's other man
    "fee088": dict(target="FEE088", episodes=["trn07", "trn08"], absent=["trn05", "trn06", "trn09"],
                   enroll_from="trn08"),  # fee087's other woman
    "mee068": dict(target="MEE068", episodes=["trn00", "trn01"], absent=["trn03", "trn04", "dev01"],
                   enroll_from="trn00", music=["trn00"]),  # meo069's other man
    "mee071": dict(target="MEE071", episodes=["tst00", "tst01"], absent=["dev00", "trn04", "trn00"],
                   enroll_from="tst00"),
    "feo072": dict(target="FEO072", episodes=["tst00", "tst01"], absent=["trn05", "trn06", "trn08"],
                   enroll_from="tst00"),
}
MEETING_SDIST = "pyannote.audio==4.0.7"


def meeting_data(work: Path) -> Path:
    """pyannote.audio's test clips (`tests/data` of its source distribution) under `work`, fetched from PyPI once."""
    import subprocess
    import tarfile

    dest = work / "pyannote-audio-tests"
    if (dest / "debug.train.rttm").exists():
        return dest
    dl = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d",
                    str(dl), MEETING_SDIST], check=True)
    tgz = next(dl.glob("pyannote*audio*.tar.gz"))
    with tarfile.open(tgz) as tf:
        members = [m for m in tf.getmembers() if "/tests/data/" in m.name and m.isfile()]
        for m in members:
            m.name = m.name.split("/tests/data/", 1)[1]
        dest.mkdir(parents=True, exist_ok=True)
        tf.extractall(dest, members=members, filter="data")
    return dest


FILLETS_PACKAGES = ("fillets-ng-data-nl", "fillets-ng-data-cs")


def fillets_bank(work: Path) -> list[str]:
    """Real recorded voices for the scenario podcasts (engine "fillets"): the acted dialogue of Debian's
    `fillets-ng-data-nl` and `-cs` (GPL-2; every line a file `<level>-<speaker>-<line>.ogg`, 22 kHz), fetched with
    `apt-get download` into `work` once and sorted into one directory per actor: the Dutch and the Czech big fish (two
    men: target and co-host), the Dutch and the Czech small fish (two women: guest and ad reader), 35-40 minutes
    each. Returns those four directories (target, co-host, guest, ad)."""
    import re
    import subprocess

    root = work / "bank-fillets"
    roles = [("nl", "v"), ("cs", "v"), ("nl", "m"), ("cs", "m")]
    dirs = [root / f"{lang}-{spk}" for lang, spk in roles]
    if all(d.is_dir() and any(d.iterdir()) for d in dirs):
        return [str(d) for d in dirs]
    deb = work / "deb"
    deb.mkdir(parents=True, exist_ok=True)
    for pkg in FILLETS_PACKAGES:
        if not list(deb.glob(f"{pkg}_*.deb")):
            subprocess.run(["apt-get", "download", pkg], cwd=deb, check=True)
        subprocess.run(["dpkg", "-x", str(next(deb.glob(f"{pkg}_*.deb"))), str(deb / pkg)], check=True)
    line = re.compile(r"^[^-]+-(v|m)-.+\.ogg$")
    for (lang, spk), d in zip(roles, dirs, strict=True):
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted((deb / f"fillets-ng-data-{lang}").rglob(f"sound/*/{lang}/*.ogg")):
            m = line.match(f.name)
            if m and m.group(1) == spk:
                link = d / f"{f.parent.parent.name}-{f.name}"
                if not link.exists():
                    link.symlink_to(f)
    return [str(d) for d in dirs]


def run_engine(engine: str, work: Path, seconds: float, episodes: int, codec: Path, workers: int,
               use: int | dict[str, int] | None = None, seed: int = 12, change_guard_s: float | None = None,
               separator: str = "none", scenarios: list[str] | None = None,
               overrides: dict | None = None, voices: list[str] | None = None, music: str = "sine",
               intro_s: float = 15.0, distinct_text: bool = False, enroll_from: str | None = None) -> dict:
    from voicepipe.corpus.synthetic import (
        EXTRA_SCENARIOS,
        SCENARIOS,
        PodcastTruth,
        make_meeting_podcast,
        make_recorded_podcast,
        make_scenario_podcast,
    )

    tag = ""
    real = engine == "recorded" or engine.startswith("meeting-")  # real recordings: no synthesized scenarios
    synth = engine  # the speech engine of the scenario podcast
    if engine == "fillets":  # real recorded voices: `fillets_bank`'s clips through the "bank" engine
        voices, synth = voices or fillets_bank(work), "bank"
    # other voices than the tuned ones (the podcast is cached under their names)
    if voices and not real:
        from voicepipe.corpus import synthetic

        synthetic.ENGINE_VOICES[synth] = dict(zip(["target", "cohost", "guest", "ad"], voices, strict=True))
        tag = "-" + "_".join(Path(v).name.replace("+", "") for v in voices)
    if music != "sine":  # a real show's theme on every episode (the podcast is cached under its own name)
        tag += f"-{music}{intro_s:g}s"
    if distinct_text:
        tag += "-distinct"
    # the default scenarios first, in their order (the same seeded episodes as before), then any extra ones asked for
    wanted = list(SCENARIOS) + [s for s in EXTRA_SCENARIOS if scenarios and s in scenarios]
    if engine == "recorded":  # real speech: pyannote's bundled two-person recording (its length, not --seconds)
        pod = work / "podcast-recorded"
        make = partial(make_recorded_podcast, pod, seed=seed)
    elif engine.startswith("meeting-"):  # real meeting speech (its clips' lengths, not --seconds)
        show = engine.split("-", 1)[1]
        if show not in MEETING_SHOWS:
            raise SystemExit(f"--engines {engine}: no such show (have {sorted(MEETING_SHOWS)})")
        pod = work / f"podcast-{engine}"
        make = partial(make_meeting_podcast, pod, meeting_data(work), seed=seed, **MEETING_SHOWS[show])
    else:
        pod = work / f"podcast-{engine}-{int(seconds)}s-{episodes}-seed{seed}{tag}"
        make = partial(make_scenario_podcast, pod, wanted, engine=synth, episodes_per_scenario=episodes,
                       episode_seconds=seconds, seed=seed, music=music, intro_s=intro_s,
                       distinct_text=distinct_text)
    truth = PodcastTruth.load(pod) if (pod / "truth.json").exists() else None
    if truth is None or (not real and not set(wanted) <= {ep.scenario for ep in truth.episodes}):
        truth = make()  # one seeded generator, scenarios in order: a podcast cached before a scenario was added
        # gets the same episodes again, and the new ones
    if use is not None:  # only the first `use` episodes of each scenario (a dict: of the scenarios it names)
        limit = use if isinstance(use, dict) else {ep.scenario: use for ep in truth.episodes}
        truth.episodes = [ep for ep in truth.episodes if int(ep.id.rsplit("-", 1)[1]) <= limit.get(ep.scenario, 10**6)]
    if scenarios:
        truth.episodes = [ep for ep in truth.episodes if ep.scenario in scenarios]
    build_dir = Path(tempfile.mkdtemp(prefix=f"purity-{engine}-", dir=work))
    enroll = truth.enrollment if enroll_from is None else _clips_from(truth, enroll_from, build_dir / "enroll")
    params = dict(enroll=[str(p) for p in enroll], workers=workers, separate=separator != "none",
                  separator="auto" if separator == "none" else separator,
                  **({} if change_guard_s is None else {"change_guard_s": change_guard_s}), **(overrides or {}))
    # what `--rerun` needs to build this feed again on its own store (cached steps stay cached)
    (build_dir / "bench.json").write_text(json.dumps({
        "engine": engine, "podcast": str(pod), "episodes": [ep.id for ep in truth.episodes], "codec": str(codec),
        "params": params}, indent=1))
    return build_and_score(engine, truth, build_dir, codec, params)


def rerun(build_dir: Path, overrides: dict) -> dict:
    """Build a stored build (`bench.json` in `build_dir`) again on its own store, its parameters updated by
    `overrides`: only the steps whose inputs changed run again. Its out/ is rewritten."""
    from voicepipe.corpus.synthetic import PodcastTruth

    if not (build_dir / "bench.json").is_file():
        raise SystemExit(f"--rerun {build_dir}: no bench.json there (a purity-ENGINE-* directory that "
                         "`--work` kept, built since --rerun exists)")
    spec = json.loads((build_dir / "bench.json").read_text())
    truth = PodcastTruth.load(spec["podcast"])
    keep = set(spec["episodes"])
    truth.episodes = [ep for ep in truth.episodes if ep.id in keep]
    return build_and_score(spec["engine"], truth, build_dir, Path(spec["codec"]), {**spec["params"], **overrides})


def build_and_score(engine: str, truth, build_dir: Path, codec: Path, params: dict) -> dict:  # noqa: ANN001
    """`build_feed` into `build_dir` with `params` (`CorpusParams` fields), scored per scenario against `truth`."""
    from voicepipe.corpus.synthetic import build_feed, score_corpus

    t0 = time.perf_counter()
    error = None
    try:
        res = build_feed(truth, build_dir, codec, **params)
        step_seconds, audio_s = res.step_seconds, res.audio_seconds
    except Exception as e:  # a build that keeps nothing fails: score what it left
        error = f"{type(e).__name__}: {e}"
        traceback.print_exc()  # a bug (not a build that kept nothing) must be visible
        step_seconds, audio_s = {}, sum(ep.duration for ep in truth.episodes)
    wall = time.perf_counter() - t0
    out = build_dir / "out"
    if error:
        print(f"{engine}: the build failed: {error}", flush=True)
    score = score_corpus(out, truth) if (out / "corpus.json").exists() else {"per_episode": {}}
    per_scenario: dict[str, dict] = {}
    for ep in truth.episodes:
        v = score["per_episode"].get(ep.id, {"target_s": 0.0, "speech_s": 0.0,
                                              "target_total_s": sum(b - a for a, b in ep.target_only())})
        agg = per_scenario.setdefault(ep.scenario, {"target_s": 0.0, "speech_s": 0.0, "target_total_s": 0.0})
        for k in agg:
            agg[k] += v[k]
    for agg in per_scenario.values():
        agg["purity"] = agg["target_s"] / agg["speech_s"] if agg["speech_s"] else 0.0
        agg["recall"] = agg["target_s"] / agg["target_total_s"] if agg["target_total_s"] else 0.0
    return {
        "engine": engine, "build": str(build_dir), "error": error, "purity": score.get("purity", 0.0),
        "recall": score.get("recall", 0.0), "scenarios": per_scenario, "audio_s": audio_s, "wall_s": round(wall, 1),
        "x_realtime": {k: round(audio_s / v, 1) for k, v in step_seconds.items() if v > 0},
        "whole_build_x_realtime": round(audio_s / wall, 2),
    }


def _clips_from(truth, episodes: str, out: Path, n: int = 3) -> list[Path]:  # noqa: ANN001 - PodcastTruth
    """Enrollment as a user would cut it from the show: the `n` longest stretches of the target alone in each of
    `episodes`' (comma-separated) published mp3 (with whatever music and noise lie under them), as wav."""
    from voicepipe.audio import load_audio, save_wav
    from voicepipe.corpus.synthetic import SR

    clips = []
    for episode in episodes.split(","):
        try:
            ep = truth.episode(episode)
        except KeyError:
            raise SystemExit(f"--enroll-from {episode}: no such episode (have {[e.id for e in truth.episodes]})"
                             ) from None
        wav = load_audio(truth.dir / f"{episode}.mp3", SR)
        spans = sorted(ep.target_only(), key=lambda ab: ab[0] - ab[1])[:n]
        if not spans:
            raise SystemExit(f"--enroll-from {episode}: the target does not speak alone there")
        print(f"enrollment cut from {episode}: {[(round(a, 2), round(b, 2)) for a, b in spans]}", flush=True)
        clips += [save_wav(out / f"enroll-{episode}-{k + 1}.wav", wav[int(a * SR): int(b * SR)], SR)
                  for k, (a, b) in enumerate(spans)]
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["espeak", "flite"])
    ap.add_argument("--seconds", type=float, default=45.0, help="length of each episode")
    ap.add_argument("--episodes", type=int, default=2, help="episodes per scenario")
    ap.add_argument("--use", default=None, help="build only the first N episodes of each scenario, or of the "
                    "scenarios named as SCENARIO=N[,SCENARIO=N] (e.g. absent=1: a show of --episodes \"all\" "
                    "episodes and one without the target)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=12, help="seed of the synthetic podcast")
    ap.add_argument("--change-guard-s", type=float, default=None, help="CorpusParams.change_guard_s (default: its "
                    "default); 0 builds without the guard at changes of speaker")
    ap.add_argument("--separator", default="none", choices=["none", "deepfilternet", "demucs", "auto"],
                    help="none: --no-separate (the issue's CPU path); else CorpusParams.separator")
    ap.add_argument("--scenarios", nargs="+", default=None, help="build only these scenarios (the extra ones, "
                    "interview and phone_guest, are generated only when named here)")
    ap.add_argument("--music", default="sine", choices=["sine", "rich"],
                    help="sine: the generator's sine-chord music in the music scenarios (every earlier result); "
                    "rich: a real show's theme on every episode (drums, bass, sawtooth chords; intro, stings, "
                    "outro; the bed under the speech in the music scenarios)")
    ap.add_argument("--intro-s", type=float, default=15.0, help="with --music rich: the intro's length")
    ap.add_argument("--distinct-text", action="store_true",
                    help="no sentence spoken twice in an episode (by default turns draw independently and may "
                    "repeat one verbatim, which a deterministic engine speaks near-identically)")
    ap.add_argument("--voices", default=None, metavar="TARGET,COHOST,GUEST,AD",
                    help="the engine's voices for the four roles instead of the tuned ones (e.g. espeak "
                    "en-gb+m2,en-us+m4,en-us+f4,en-gb-x-rp+m1): a show nobody tuned for")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="another CorpusParams field for the build (VALUE read as JSON, else a string), e.g. "
                    "--set overlap_count=1.5; repeatable")
    ap.add_argument("--enroll-from", default=None, metavar="EPISODE[,EPISODE]",
                    help="enroll with the target's three longest stretches alone in each of these episodes' mp3 "
                    "(e.g. music-1: under its bed), as a user clips the host from the show, instead of the clean "
                    "clips")
    ap.add_argument("--work", type=Path, default=None, help="keep podcasts here between runs")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--rerun", type=Path, nargs="+", default=None, metavar="BUILD_DIR",
                    help="build these stored builds (a purity-ENGINE-* directory under --work) again on their own "
                    "stores with --set's changes, instead of building new ones")
    args = ap.parse_args()
    from voicepipe.corpus.config import CorpusParams

    overrides = {}
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in CorpusParams.model_fields:  # CorpusParams ignores unknown keys: a typo would build the default
            ap.error(f"--set {kv}: {key!r} is not a CorpusParams field")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if args.voices and len(args.voices.split(",")) != 4:
        ap.error(f"--voices {args.voices}: give four voices (target, co-host, guest, ad reader), comma-separated")

    try:
        use = (None if args.use is None else int(args.use) if args.use.isdigit()
               else {k: int(v) for k, v in (x.split("=", 1) for x in args.use.split(","))})
    except ValueError:
        ap.error(f"--use {args.use!r}: expected N or SCENARIO=N[,SCENARIO=N]")

    from voicepipe.models.tiny import build_tiny_codec

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-purity-"))
    work.mkdir(parents=True, exist_ok=True)
    codec = work / "codec"
    if not (codec / "config.json").exists():
        build_tiny_codec(codec)
    if args.rerun:
        results = [rerun(d, overrides) for d in args.rerun]
    else:
        results = [run_engine(e, work, args.seconds, args.episodes, codec, args.workers, use, args.seed,
                              args.change_guard_s, args.separator, args.scenarios, overrides,
                              args.voices.split(",") if args.voices else None, args.music, args.intro_s,
                              args.distinct_text, args.enroll_from)
                   for e in args.engines]
    print("| engine | scenario | purity | recall |\n|---|---|---:|---:|")
    for r in results:
        for name, s in r["scenarios"].items():
            if not s["target_total_s"]:  # the target is absent: nothing should be kept
                print(f"| {r['engine']} | {name} | {s['speech_s']:.1f} s of other voices kept | – |")
            else:
                print(f"| {r['engine']} | {name} | {s['purity']:.3f} | {s['recall']:.3f} |")
        print(f"| {r['engine']} | **whole** | **{r['purity']:.3f}** | **{r['recall']:.3f}** |")
    for r in results:
        print(f"{r['engine']} ({r['build']}): {r['audio_s']:.0f} s audio, build {r['wall_s']} s "
              f"({r['whole_build_x_realtime']}x), "
              f"steps x real time {r['x_realtime']}" + (f", ERROR {r['error']}" if r["error"] else ""))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
