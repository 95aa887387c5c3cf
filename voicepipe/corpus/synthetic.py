"""Synthetic podcasts with known ground truth, for tests, benchmarks and `voicepipe demo`.

`make_podcast`: two espeak-ng voices take turns (the *target* and a *co-host*) over a music bed and noise.
`make_scenario_podcast`: the situations real shows have, one scenario per episode, from either of two offline
speech engines (espeak-ng, flite): a co-host whose voice embeds close to the target's, a guest, backchannels
over the target, crosstalk, a music intro/outro and bed, an ad break read by another voice, all of them, or an
episode the target is absent from (the co-host hosts a guest: nothing of it belongs in the corpus).
Episodes are written as 64 kb/s mp3 (ffmpeg), described by an RSS feed, and served from 127.0.0.1 by
`serve_feed`. The truth (who speaks when, overlaps included) is saved in `truth.json`, so a corpus built from
the feed can be scored (`score_corpus`): purity = target-only seconds kept / all speech seconds kept (silence
neutral), recall = target-only seconds kept / target-only seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

import numpy as np

from voicepipe.audio import load_audio, normalize_loudness, resample, save_wav
from voicepipe.corpus import intervals
from voicepipe.errors import InputError

if TYPE_CHECKING:
    from voicepipe.corpus.build import BuildResult

SR = 24000
TARGET_VOICE = "en-us+m3"
COHOST_VOICE = "en-gb+f3"

_SENTENCES = [
    "Welcome back to the show, today we are talking about solar power on small boats.",
    "I spent most of the summer testing batteries in the garage.",
    "The first thing you notice is how quickly the voltage drops under load.",
    "We measured every panel twice, once in the morning and once at noon.",
    "Honestly the cheapest charge controller surprised me the most.",
    "If you remember one thing from this episode, keep your cables short.",
    "Let me read a question that came in from a listener last week.",
    "The inverter hummed loudly whenever the fridge turned on.",
    "Lithium iron phosphate cells are heavier but they last much longer.",
    "We wired four panels in series and the numbers looked great.",
    "A good fuse costs almost nothing compared to a fire.",
    "That is why I always carry a spare multimeter in the van.",
    "The weather was cloudy for most of the test, which helped us.",
    "Our listeners asked about cold weather charging many times.",
    "You should never charge these cells below freezing.",
    "I think the real story here is the price of copper.",
    "Next week we will open up a cheap inverter and look inside.",
    "Thanks to everyone who sent in photos of their setups.",
    "My neighbor built a wind turbine out of an old washing machine.",
    "The results were better than I expected, to be honest.",
    "Please check your connections before you blame the battery.",
    "We logged the current every second for three full days.",
    "The display showed ninety eight percent even when the pack was empty.",
    "Keep an eye on the temperature of the terminals.",
    "A clean install is a safe install, that is my motto.",
    "I ordered the wrong crimping tool twice this month.",
    "Some of you will disagree with me, and that is fine.",
    "The manual was translated badly and missed a whole page.",
]
_COHOST_SENTENCES = [
    "Right, that makes sense.",
    "Wait, how long did that take you?",
    "I have a different opinion about that, actually.",
    "So what would you recommend for a beginner?",
    "That sounds expensive, to be honest.",
    "Our sponsor today makes quality tools for makers.",
    "Can you explain why the voltage sags like that?",
    "I tried that last year and it did not work for me.",
    "People always ask me about the warranty.",
    "Let us move on to the next question.",
    "Oh, that is a great point.",
    "I remember when panels cost ten times as much.",
]
_ENROLL_SENTENCES = [
    "This is a clean recording of my voice for enrollment purposes.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please use these sentences to recognize how I sound when I speak.",
]


@dataclass
class Turn:
    speaker: str  # "target" | "cohost"
    start: float
    end: float
    text: str


@dataclass
class EpisodeTruth:
    id: str
    file: str  # file name inside the podcast dir
    title: str
    duration: float
    published: str
    turns: list[Turn] = field(default_factory=list)
    scenario: str = ""

    def speaker_seconds(self, speaker: str, start: float = 0.0, end: float = float("inf")) -> float:
        """Seconds of `speaker` speech inside [start, end)."""
        return sum(max(0.0, min(end, t.end) - max(start, t.start)) for t in self.turns if t.speaker == speaker)

    def target_only(self) -> list[tuple[float, float]]:
        """Intervals where the target speaks and nobody else does."""
        tgt = intervals.union([(t.start, t.end) for t in self.turns if t.speaker == "target"])
        return intervals.subtract(tgt, intervals.union([(t.start, t.end) for t in self.turns if t.speaker != "target"]))

    def any_speech(self) -> list[tuple[float, float]]:
        """Intervals where anybody speaks."""
        return intervals.union([(t.start, t.end) for t in self.turns])


@dataclass
class PodcastTruth:
    dir: Path
    target_voice: str
    cohost_voice: str
    episodes: list[EpisodeTruth]
    enrollment: list[Path]
    voices: dict[str, str] = field(default_factory=dict)  # role -> "engine:voice" (scenario podcasts)

    def episode(self, episode_id: str) -> EpisodeTruth:
        for ep in self.episodes:
            if ep.id == episode_id:
                return ep
        raise KeyError(episode_id)

    def save(self) -> Path:
        data = asdict(self)
        data["dir"] = str(self.dir)
        data["enrollment"] = [str(p) for p in self.enrollment]
        out = self.dir / "truth.json"
        out.write_text(json.dumps(data, indent=1))
        return out

    @classmethod
    def load(cls, directory: str | Path) -> PodcastTruth:
        data = json.loads((Path(directory) / "truth.json").read_text())
        eps = [EpisodeTruth(**{**e, "turns": [Turn(**t) for t in e["turns"]]}) for e in data["episodes"]]
        enroll = [Path(p) for p in data["enrollment"]]
        return cls(Path(data["dir"]), data["target_voice"], data["cohost_voice"], eps, enroll, data.get("voices", {}))


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        raise InputError(f"{binary}: not installed (the synthetic podcast needs espeak-ng and ffmpeg; run make setup)")


def speak(text: str, voice: str, *, speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Synthesize `text` with espeak-ng; float32 mono at 24 kHz."""
    _need("espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav_path), text],
            check=True,
            capture_output=True,
        )
        wav = load_audio(wav_path, SR)
    # espeak pads with silence at both ends; trim to the voiced part (+10 ms)
    idx = np.flatnonzero(np.abs(wav) > 1e-3)
    if idx.size:
        wav = wav[max(0, idx[0] - 240) : idx[-1] + 240]
    return wav / (np.max(np.abs(wav)) + 1e-9) * 0.5


def _music_bed(n: int, rng: np.random.Generator, level_db: float) -> np.ndarray:
    """Soft chord progression (sines with a slow tremolo), changing every 2 s."""
    t = np.arange(n) / SR
    out = np.zeros(n, dtype=np.float64)
    roots = [220.0, 174.6, 196.0, 261.6]
    seg = 2 * SR
    for i in range(0, n, seg):
        root = roots[(i // seg) % len(roots)] * (1.0 + 0.01 * rng.standard_normal())
        sl = slice(i, min(n, i + seg))
        for ratio in (1.0, 1.25, 1.5):
            out[sl] += np.sin(2 * np.pi * root * ratio * t[sl])
    out *= 0.6 + 0.4 * np.sin(2 * np.pi * 0.25 * t)
    out /= np.sqrt(np.mean(out**2)) + 1e-9
    return (out * 10 ** (level_db / 20)).astype(np.float32)


def _show_music(n: int, rng: np.random.Generator, start: int, end: int,
                boost: tuple[int, int] | None = None) -> np.ndarray:  # fmt: skip
    """A show's music: intro and outro at -14 dBFS, a -28 dBFS bed under the speech in [start, end), 6 dB louder
    over `boost` (an ad break)."""
    bed = _music_bed(n, rng, -28.0)
    loud = np.full(n, 10 ** ((-14.0 + 28.0) / 20), dtype=np.float32)
    loud[start:end] = 1.0
    if boost is not None:
        loud[boost[0] : boost[1]] = 10 ** (6 / 20)
    return bed * loud


def _env(n: int, tau_s: float) -> np.ndarray:
    return np.exp(-np.arange(n) / (tau_s * SR))


def _saw(freq: float, n: int, harmonics: int = 12) -> np.ndarray:
    """A band-limited sawtooth (harmonics 1/k up to `harmonics` or Nyquist), unit peak-ish."""
    t = np.arange(n) / SR
    out = np.zeros(n)
    for k in range(1, harmonics + 1):
        if k * freq >= SR / 2 - 500:
            break
        out += np.sin(2 * np.pi * k * freq * t) / k
    return out


def _rich_music(n: int, rng: np.random.Generator, level_db: float) -> np.ndarray:
    """Show music as real shows have it (not the sine chords of `_music_bed`): a drum kit (kick = a decaying sine
    swept 150 -> 45 Hz, snare = a noise burst over a 190 Hz body, hi-hat = high-passed noise on every eighth), a
    sawtooth bass line on the bar's root and sawtooth chords (slightly detuned pairs), 92-124 bpm, broadband,
    soft-limited as mastered music is, at `level_db` dBFS RMS."""
    from scipy.signal import butter, sosfilt

    bpm = float(rng.uniform(92, 124))
    beat = int(60.0 / bpm * SR)
    bar = 4 * beat
    out = np.zeros(n + bar, dtype=np.float64)
    hp = butter(4, 7000, "highpass", fs=SR, output="sos")
    bp = butter(2, [1200, 8000], "bandpass", fs=SR, output="sos")
    # kick
    kn = int(0.35 * SR)
    tk = np.arange(kn) / SR
    sweep = 45 + 105 * np.exp(-tk / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / SR) * _env(kn, 0.09)
    sn = int(0.2 * SR)
    hn = int(0.06 * SR)
    roots = [55.0, 43.65, 49.0, 65.41]  # A1 F1 G1 C2: a common progression
    first = int(rng.integers(len(roots)))
    chord = (1.0, 1.26, 1.5)
    for b, at in enumerate(range(0, n, bar)):
        root = roots[(first + b) % len(roots)]
        for q in range(4):  # beats
            pos = at + q * beat
            if q in (0, 2) or (q == 3 and rng.random() < 0.3):
                out[pos : pos + kn] += 0.9 * kick[: out.size - pos]
            if q in (1, 3):
                noise = sosfilt(bp, rng.standard_normal(sn)) * _env(sn, 0.05)
                body = np.sin(2 * np.pi * 190 * np.arange(sn) / SR) * _env(sn, 0.04)
                out[pos : pos + sn] += (0.7 * noise / (np.max(np.abs(noise)) + 1e-9) + 0.3 * body)[: out.size - pos]
        for e in range(8):  # hi-hat on every eighth
            pos = at + e * beat // 2
            hh = sosfilt(hp, rng.standard_normal(hn)) * _env(hn, 0.012 if e % 2 == 0 else 0.025)
            out[pos : pos + hn] += 0.25 * hh[: out.size - pos] / (np.max(np.abs(hh)) + 1e-9)
        for e in range(8):  # bass: eighths on the root, octave jump on the off-beat of 4
            pos = at + e * beat // 2
            f = root * (2.0 if e == 7 else 1.0)
            bn = beat // 2
            out[pos : pos + bn] += 0.35 * (_saw(f, bn, 8) * _env(bn, 0.15))[: out.size - pos]
        # chords: sawtooth triad two octaves up, detuned pairs, a soft attack, held for the bar
        env = np.minimum(1.0, np.arange(bar) / (0.02 * SR)) * _env(bar, 1.2)
        pad = np.zeros(bar)
        for r in chord:
            for det in (0.997, 1.003):
                pad += _saw(root * 4 * r * det, bar, 10)
        out[at : at + bar] += 0.2 * pad * env
    out = out[:n]
    out /= np.sqrt(np.mean(out**2)) + 1e-9
    out = 3.0 * np.tanh(out / 3.0)  # mastered: a soft limiter brings the drums' crest factor from ~18 to ~11 dB
    out /= np.sqrt(np.mean(out**2)) + 1e-9
    return (out * 10 ** (level_db / 20)).astype(np.float32)


def _rich_show_music(n: int, rng: np.random.Generator, intro: int, start: int, end: int, *, bed: bool,
                     stings: Sequence[tuple[int, int]] = (), boost: tuple[int, int] | None = None) -> np.ndarray:
    """A real show's theme (`_rich_music`): the intro over [0, intro) at -12 dBFS fading out over its last second
    into the bed (-28 dBFS under the speech in [start, end), when `bed`) or silence, a -12 dBFS sting over each of
    `stings` (between segments), the bed 6 dB louder over `boost` (an ad break), and a -12 dBFS outro after `end`."""
    track = _rich_music(n, rng, 0.0)
    loud, quiet = 10 ** (-12.0 / 20), (10 ** (-28.0 / 20) if bed else 0.0)
    gain = np.full(n, quiet, dtype=np.float64)
    fade = min(intro, SR)
    gain[: intro - fade] = loud
    gain[intro - fade : intro] = np.linspace(loud, quiet, fade)
    for a, b in stings:
        ramp = min(int(0.05 * SR), (b - a) // 4)
        g = np.full(b - a, loud)
        g[:ramp] = np.linspace(quiet, loud, ramp)
        g[-ramp:] = np.linspace(loud, quiet, ramp)
        gain[a:b] = g
    if boost is not None and bed:
        gain[boost[0] : boost[1]] = quiet * 10 ** (6 / 20)
    gain[end : end + int(0.3 * SR)] = np.linspace(quiet, loud, min(int(0.3 * SR), max(0, n - end)))
    gain[end + int(0.3 * SR) :] = loud
    return (track * gain).astype(np.float32)


def telephone(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`wav` as a caller on the phone sounds: 8 kHz, 300-3400 Hz, mu-law companding, a little line noise."""
    from scipy.signal import butter, sosfilt

    x = resample(wav.astype(np.float32), SR, 8000).astype(np.float64)
    x = sosfilt(butter(4, [300, 3400], "bandpass", fs=8000, output="sos"), x)
    peak = np.max(np.abs(x)) + 1e-9
    mu = 255.0
    y = np.sign(x / peak) * np.log1p(mu * np.abs(x / peak)) / np.log1p(mu)
    y = np.round(y * 127) / 127  # 8-bit mu-law
    x = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu * peak
    x += 10 ** (-45 / 20) * rng.standard_normal(x.size)
    out = resample(x.astype(np.float32), 8000, SR)
    return (out / (np.max(np.abs(out)) + 1e-9) * 0.5).astype(np.float32)


def _episode_audio(
    rng: np.random.Generator, seconds: float, target_voice: str, cohost_voice: str
) -> tuple[np.ndarray, list[Turn]]:
    parts: list[np.ndarray] = []
    turns: list[Turn] = []
    pos = int(1.5 * SR)  # music-only intro
    parts.append(np.zeros(pos, dtype=np.float32))
    speaker = "target"
    while pos < seconds * SR:
        if speaker == "target":
            texts = list(rng.choice(_SENTENCES, size=int(rng.integers(1, 3)), replace=False))
            voice, base_speed = target_voice, 155
        else:
            texts = list(rng.choice(_COHOST_SENTENCES, size=1))
            voice, base_speed = cohost_voice, 165
        start = pos
        for k, text in enumerate(texts):
            if k:
                pause = np.zeros(int(rng.uniform(0.35, 0.5) * SR), dtype=np.float32)
                parts.append(pause)
                pos += pause.size
            wav = speak(text, voice, speed=base_speed + int(rng.integers(-10, 10)), pitch=int(rng.integers(40, 60)))
            parts.append(wav)
            pos += wav.size
        turns.append(Turn(speaker, round(start / SR, 3), round(pos / SR, 3), " ".join(texts)))
        gap = np.zeros(int(rng.uniform(0.5, 0.9) * SR), dtype=np.float32)
        parts.append(gap)
        pos += gap.size
        speaker = "cohost" if speaker == "target" and rng.random() < 0.7 else "target"
    parts.append(np.zeros(SR, dtype=np.float32))
    speech = np.concatenate(parts)
    mix = speech + _music_bed(speech.size, rng, -38.0) + (10 ** (-55 / 20)) * rng.standard_normal(speech.size)
    return mix.astype(np.float32), turns


def _to_mp3(wav: np.ndarray, path: Path) -> None:
    _need("ffmpeg")
    with tempfile.TemporaryDirectory() as tmp:
        src = save_wav(Path(tmp) / "x.wav", wav, SR)
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-b:a", "64k", str(path)],
            check=True,
            capture_output=True,
        )


def make_podcast(
    out_dir: str | Path,
    n_episodes: int = 3,
    seed: int = 0,
    *,
    episode_seconds: float = 45.0,
    target_voice: str = TARGET_VOICE,
    cohost_voice: str = COHOST_VOICE,
) -> PodcastTruth:
    """Write `n_episodes` mp3 episodes, 3 enrollment wavs of the target, and `truth.json` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    episodes = []
    day0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for i in range(n_episodes):
        wav, turns = _episode_audio(rng, episode_seconds, target_voice, cohost_voice)
        name = f"episode-{i + 1:02d}.mp3"
        _to_mp3(wav, out / name)
        published = format_datetime(day0 + timedelta(days=7 * i))
        seconds = round(wav.size / SR, 3)
        episodes.append(EpisodeTruth(f"ep{i + 1:02d}", name, f"Episode {i + 1}", seconds, published, turns))
    enrollment = []
    for k, text in enumerate(_ENROLL_SENTENCES):
        enrollment.append(save_wav(out / f"enroll-{k + 1}.wav", speak(text, target_voice, speed=155), SR))
    truth = PodcastTruth(out, target_voice, cohost_voice, episodes, enrollment)
    truth.save()
    return truth


# ------------------------------------------------------------------------------------------------ scenarios
SCENARIOS = ("cohost_close", "guest", "backchannels", "crosstalk", "music", "ad_break", "all", "absent")
# role -> voice per engine. espeak: the co-host en-gb+f3 embeds at ~0.85-0.88 (resemblyzer, whole sentences) to the
# target en-us+m3, above the old fixed 0.82 threshold (the "guest at 0.87"); flite: the co-host rms at ~0.7
# to awb. The guest and the ad reader differ more. (en-us+m1, at 0.87-0.90, was tried as the espeak co-host: on
# 1.5 s windows its centroid sits at cosine 0.91 to the target's, inside the target's own spread, 0.90, and no
# unsupervised clustering tried separated them.)
ENGINE_VOICES = {
    "espeak": {"target": "en-us+m3", "cohost": "en-gb+f3", "guest": "en-us+f2", "ad": "en-us+m7"},
    "flite": {"target": "awb", "cohost": "rms", "guest": "slt", "ad": "kal"},
    # festival (Debian festival, festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts): two recorded male
    # diphone voices as target and co-host (two real speakers' diphones), the HTS arctic female as the guest, and
    # the first diphone voice raised to a 140 Hz mean as the ad reader. Not used by the tests (not in CI's image).
    "festival": {"target": "ked_diphone", "cohost": "kal_diphone", "guest": "cmu_us_slt_arctic_hts",
                 "ad": "kal_diphone:140"},
}
# not in SCENARIOS (the default feed, which tests and results depend on): built when asked for by name.
# interview: the target introduces a guest, then asks short questions that the guest answers at length; phone_guest:
# the same with the guest on the phone (`telephone`: 8 kHz, 300-3400 Hz, mu-law); solo: the target alone under the
# show's music (a host's solo episode)
EXTRA_SCENARIOS = ("interview", "phone_guest", "solo")
_QUESTIONS = [
    "So how did you get started?",
    "What went wrong the first time?",
    "Why did you pick that battery?",
    "How much did all of that cost you?",
    "And what would you do differently now?",
    "Was it worth it in the end?",
    "How did your family react?",
    "What surprised you the most?",
]
_BACKCHANNELS = ["yeah", "right", "mm hm", "exactly", "sure", "okay", "oh wow"]
_AD = [
    "This episode is brought to you by Volt Supply, batteries and cables shipped the same day.",
    "Use the code podcast at checkout for ten percent off your first order.",
]


_BANK: dict[str, dict[Path, int]] = {}  # "bank" voices: each directory's clips and how often each was taken
_BANK_DUR: dict[Path, float] = {}
_BANK_SEC_PER_CHAR = 0.065  # read English speech: the length a text's stand-in clip should have


def _bank_speak(voice_dir: str, text: str) -> np.ndarray:
    """A recorded clip of the speaker whose clips fill `voice_dir` (wav, flac or ogg) standing in for `text`: the
    least used of those whose length is nearest the text's (~0.065 s a character), so a backchannel gets a short
    clip and a turn a long one, and a clip comes back only when the others of its length have been used; its room
    tone before and after the speech is cut. The words are the recording's own, not `text`'s (purity and recall are
    scored on who speaks when, not on the words)."""
    import soundfile as sf

    d = Path(voice_dir)
    uses = _BANK.get(voice_dir)
    if uses is None:
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in (".wav", ".flac", ".ogg"))
        _BANK_DUR.update((p, sf.info(p).duration) for p in files)
        files = [p for p in files if _BANK_DUR[p] >= 0.2]  # (a packaged line may be empty)
        if not files:
            raise InputError(f"bank voice {voice_dir}: no wav, flac or ogg clips of 0.2 s or more there")
        uses = _BANK[voice_dir] = dict.fromkeys(files, 0)
    want = _BANK_SEC_PER_CHAR * max(1, len(text))
    clip = min(uses, key=lambda p: (uses[p], abs(_BANK_DUR[p] - want) > 0.5 * want, abs(_BANK_DUR[p] - want),
                                    p.name))
    uses[clip] += 1
    wav = load_audio(clip, SR)
    # a recorded line ends in a second or two of room tone and reverb (above the synthesizers' trim level of 1e-3):
    # keep 20 ms frames within 35 dB of its loudest one, so the timeline's turn is the speech, not the tail
    n = wav.size // 480
    if n:
        rms = np.sqrt(np.mean(wav[: n * 480].reshape(n, 480) ** 2, axis=1))
        live = np.flatnonzero(rms > rms.max() * 10 ** (-35 / 20))
        wav = wav[max(0, live[0] * 480 - 1200) : min(wav.size, (live[-1] + 1) * 480 + 1200)]
    return wav


def speak_with(engine: str, text: str, voice: str, *, speed: float = 1.0, pitch: float = 0.0) -> np.ndarray:
    """Synthesize `text` with `engine` ("espeak", "flite" or "festival"), float32 mono 24 kHz, trimmed, peak 0.5.
    `speed` > 1 is faster; `pitch` moves espeak's pitch (flite and festival keep their voices' own). Engine "bank":
    a real recording of the speaker whose clips fill the directory `voice` (`_bank_speak`; speed and pitch kept)."""
    if engine == "bank":
        wav = _bank_speak(voice, text)
    elif engine == "espeak":
        return speak(text, voice, speed=int(160 * speed), pitch=int(50 + 4 * pitch))
    elif engine not in ("flite", "festival"):
        raise InputError(f"speech engine {engine!r}: unknown (expected espeak, flite, festival or bank)")
    else:
        wav = _engine_wav(engine, text, voice, speed)
    idx = np.flatnonzero(np.abs(wav) > 1e-3)
    if idx.size:
        wav = wav[max(0, idx[0] - 240) : idx[-1] + 240]
    return wav / (np.max(np.abs(wav)) + 1e-9) * 0.5


def _engine_wav(engine: str, text: str, voice: str, speed: float) -> np.ndarray:
    """flite's or festival's synthesis of `text` at 24 kHz, untrimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "s.wav"
        if engine == "flite":
            _need("flite")
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / speed:.3f}", "-t", text, "-o",
                   str(wav_path)]  # speed only (its voices' own pitch models are kept)
            stdin = None
        else:
            _need("text2wave")  # festival; "VOICE:F0" sets a diphone voice's mean pitch (Hz)
            name, _, f0 = voice.partition(":")
            pitch_eval = (["-eval", f"(set! int_lr_params '((target_f0_mean {float(f0):.0f}) (target_f0_std 20)"
                           " (model_f0_mean 170) (model_f0_std 34)))"] if f0 else [])
            cmd = ["text2wave", "-eval", f"(voice_{name})", *pitch_eval, "-eval",
                   f"(Parameter.set 'Duration_Stretch {1.0 / speed:.3f})", "-o", str(wav_path)]
            stdin = text.encode()  # text2wave reads the text from its standard input
        subprocess.run(cmd, input=stdin, check=True, capture_output=True)
        return load_audio(wav_path, SR)


def _pink(n: int, rng: np.random.Generator, level_db: float) -> np.ndarray:
    """Pink (1/f) noise at `level_db` dBFS RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    spec[1:] /= np.sqrt(f[1:])
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12) * 10 ** (level_db / 20)).astype(np.float32)


class _Timeline:
    """Speech placed at absolute times on one track (overlaps add), with the truth of who speaks when."""

    def __init__(self) -> None:
        self.clips: list[tuple[int, np.ndarray]] = []
        self.turns: list[Turn] = []
        self.end = 0

    def put(self, at: int, wav: np.ndarray, speaker: str, text: str) -> int:
        at = max(0, at)
        self.clips.append((at, wav))
        self.turns.append(Turn(speaker, round(at / SR, 3), round((at + wav.size) / SR, 3), text))
        self.end = max(self.end, at + wav.size)
        return at + wav.size

    def render(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        for at, w in self.clips:
            out[at : at + w.size] += w[: max(0, n - at)]
        return out


def _scenario_episode(
    rng: np.random.Generator, scenario: str, seconds: float, engine: str, *, music: str = "sine",
    intro_s: float = 15.0, distinct_text: bool = False,
) -> tuple[np.ndarray, list[Turn]]:
    """One episode of `scenario` (see SCENARIOS, EXTRA_SCENARIOS): its mix and the truth turns (one per sentence /
    backchannel). `music="sine"` (the default, what every earlier result used): the music scenarios get
    `_show_music`'s sine chords (4 s intro). `music="rich"`: every episode gets a real show's theme
    (`_rich_show_music`: drums, bass, sawtooth chords; an `intro_s` intro at -12 dBFS, a -12 dBFS sting between
    segments at about a third and two thirds of the episode, an outro), and the music scenarios the bed under the
    speech too. `distinct_text`: no sentence is spoken twice in the episode until its pool is used up (by default
    turns draw independently, so a sentence may recur verbatim: a deterministic engine then speaks near-identical
    audio, which a speaker model's windows cluster by, as no real show would give them)."""
    decks: dict[int, list[str]] = {}

    def pick(pool: list[str], n: int) -> list[str]:
        if not distinct_text:
            return [str(x) for x in rng.choice(pool, size=n, replace=False)]
        out: list[str] = []
        while len(out) < n:
            deck = decks.setdefault(id(pool), [])
            if not deck:
                deck.extend(str(x) for x in rng.permutation(pool) if str(x) not in out)
            out.append(deck.pop())
        return out

    if scenario not in SCENARIOS + EXTRA_SCENARIOS:
        raise InputError(f"scenario {scenario!r}: unknown (expected one of {', '.join(SCENARIOS + EXTRA_SCENARIOS)})")
    if music not in ("sine", "rich"):
        raise InputError(f"music {music!r}: unknown (expected sine or rich)")
    rich = music == "rich"
    v = ENGINE_VOICES[engine]
    every = scenario == "all"
    music_bed = every or scenario == "music"
    interview = scenario in ("interview", "phone_guest")  # the guest talks most; the target asks short questions
    other = "guest" if scenario == "guest" or interview else "cohost"
    absent = scenario == "absent"  # the target is away: the co-host hosts a guest (a real feed has such episodes)
    solo = scenario == "solo"  # the host alone: one sentence after another, nobody else speaks
    tl = _Timeline()
    intro = int(intro_s * SR) if rich else int(4.0 * SR) if music_bed else int(1.0 * SR)
    pos = intro
    stings: list[tuple[int, int]] = []
    sting_at = [intro + int(f * (seconds * SR - intro)) for f in (1 / 3, 2 / 3)] if rich else []
    speaker = "cohost" if absent else "target"
    ad_done = not (every or scenario == "ad_break")
    ad_span: tuple[int, int] | None = None
    first = True
    while pos < seconds * SR:
        if sting_at and pos > sting_at[0] and ad_done:  # a sting between segments (not inside the ad break)
            sting_at.pop(0)
            pos += int(0.4 * SR)
            stings.append((pos, pos + int(rng.uniform(1.5, 2.5) * SR)))
            pos = stings[-1][1] + int(0.4 * SR)
        if not ad_done and pos > 0.45 * seconds * SR:  # the ad break, read by another voice, mid-episode
            pos += int(0.6 * SR)
            start = pos
            for text in _AD:
                pos = tl.put(pos, speak_with(engine, text, v["ad"], speed=1.1), "ad", text) + int(0.3 * SR)
            ad_span = (start, pos)
            pos += int(0.6 * SR)
            ad_done = True
            continue
        if interview and speaker == "target":  # an introduction first, then short questions
            texts = (pick(_SENTENCES, int(rng.integers(1, 3))) if first
                     else pick(_QUESTIONS, 1) if distinct_text else [str(rng.choice(_QUESTIONS))])
        elif interview:
            texts = pick(_SENTENCES, int(rng.integers(2, 5)))
        elif speaker == "target" or (absent and speaker == "cohost"):
            texts = pick(_SENTENCES, int(rng.integers(1, 4)))
        elif other == "guest" or absent:
            texts = pick(_COHOST_SENTENCES, int(rng.integers(2, 4)))
        else:
            texts = pick(_COHOST_SENTENCES, int(rng.integers(1, 3)))
        first = False
        who = speaker if speaker == "target" or absent else other
        voice = v[who]
        for k, text in enumerate(texts):
            if k:
                pos += int(rng.uniform(0.3, 0.5) * SR)
            wav = speak_with(engine, text, voice, speed=rng.uniform(0.95, 1.08), pitch=rng.uniform(-1.0, 1.0))
            if scenario == "phone_guest" and who == "guest":
                wav = telephone(wav, rng)
            start = pos
            pos = tl.put(pos, wav, who, text)
            if speaker == "target" and (every or scenario == "backchannels") and wav.size > 2.0 * SR:
                # the co-host's "yeah" / "right" over the target's sentence
                bc = str(rng.choice(_BACKCHANNELS))
                at = start + int(rng.uniform(0.3, 0.7) * wav.size)
                tl.put(at, speak_with(engine, bc, v["cohost"], speed=1.05) * 0.8, "cohost", bc)
        # the next turn: a pause, none at all (a change of speaker without a pause), or crosstalk
        crosstalk = (every or scenario == "crosstalk") and rng.random() < 0.6
        if crosstalk:
            pos -= int(rng.uniform(0.4, 1.0) * SR)
        elif (scenario in ("cohost_close", "guest") or interview) and rng.random() < 0.5:
            pos += int(rng.uniform(0.0, 0.05) * SR)
        else:
            pos += int(rng.uniform(0.5, 0.9) * SR)
        if absent:
            speaker = "guest" if speaker == "cohost" else "cohost"
        elif solo:
            speaker = "target"
        elif other == "cohost" and scenario == "backchannels":
            speaker = "target" if speaker != "target" or rng.random() < 0.6 else "cohost"
        else:
            speaker = "cohost" if speaker == "target" else "target"
    if rich:
        n = tl.end + int(6.0 * SR)
        mix = tl.render(n) + _pink(n, rng, -50.0)
        mix += _rich_show_music(n, rng, intro, intro, tl.end, bed=music_bed, stings=stings, boost=ad_span)
        if ad_span is not None and not music_bed:
            mix[ad_span[0] : ad_span[1]] += _rich_music(ad_span[1] - ad_span[0], rng, -26.0)
    else:
        n = tl.end + (int(4.0 * SR) if music_bed else SR)
        mix = tl.render(n) + _pink(n, rng, -50.0)
        if music_bed:
            mix += _show_music(n, rng, intro, tl.end, ad_span)
        elif ad_span is not None:
            mix[ad_span[0] : ad_span[1]] += _music_bed(ad_span[1] - ad_span[0], rng, -26.0)
    peak = float(np.max(np.abs(mix)))
    if peak > 0.98:
        mix *= 0.98 / peak
    return mix.astype(np.float32), sorted(tl.turns, key=lambda t: t.start)


def make_scenario_podcast(
    out_dir: str | Path,
    scenarios: Sequence[str] = SCENARIOS,
    *,
    engine: str = "espeak",
    episodes_per_scenario: int = 1,
    episode_seconds: float = 40.0,
    seed: int = 0,
    music: str = "sine",
    intro_s: float = 15.0,
    distinct_text: bool = False,
) -> PodcastTruth:
    """One episode per scenario (x `episodes_per_scenario`) spoken by `engine`'s voices, as 64 kb/s mp3, plus 3
    clean enrollment clips of the target and `truth.json`. Episode ids: `<scenario>-<n>`. `music`, `intro_s`: see
    `_scenario_episode` ("rich": every episode under a real show's theme, an `intro_s` intro); `distinct_text`: no
    sentence spoken twice in an episode (`_scenario_episode`)."""
    if engine not in ENGINE_VOICES:
        raise InputError(f"speech engine {engine!r}: unknown (expected one of {', '.join(ENGINE_VOICES)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    episodes = []
    day0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    for si, scenario in enumerate(scenarios):
        for k in range(episodes_per_scenario):
            wav, turns = _scenario_episode(rng, scenario, episode_seconds, engine, music=music, intro_s=intro_s,
                                           distinct_text=distinct_text)
            eid = f"{scenario}-{k + 1}"
            _to_mp3(wav, out / f"{eid}.mp3")
            published = format_datetime(day0 + timedelta(days=si * episodes_per_scenario + k))
            episodes.append(EpisodeTruth(eid, f"{eid}.mp3", f"{scenario} {k + 1}", round(wav.size / SR, 3),
                                         published, turns, scenario))
    voices = ENGINE_VOICES[engine]
    enrollment = [save_wav(out / f"enroll-{k + 1}.wav", speak_with(engine, text, voices["target"]), SR)
                  for k, text in enumerate(_ENROLL_SENTENCES)]
    truth = PodcastTruth(out, f"{engine}:{voices['target']}", f"{engine}:{voices['cohost']}", episodes, enrollment,
                         {role: f"{engine}:{name}" for role, name in voices.items()})
    truth.save()
    return truth


# pyannote.audio's wheel ships one real recorded conversation (30 s, two people, turns annotated in RTTM): the only
# real speech available offline here. Synthetic voices separate far more easily than real ones (facts.md), so the
# purity benchmark scores this recording too. Its speaker91 talks alone from 21.9 to 27.8 s: that span is the
# enrollment, and the episodes are cut from the first 21.7 s (never the enrollment's own audio).
RECORDED_ENROLL = (21.9, 27.8)
RECORDED_EPISODE = (0.0, 21.7)
RECORDED_TARGET = "speaker91"


def recorded_conversation() -> tuple[Path, list[tuple[float, float, str]]]:
    """pyannote.audio's bundled sample: (wav path, [(start, end, speaker)] from its RTTM)."""
    try:
        import pyannote.audio
    except ImportError as e:
        raise InputError(f"the recorded conversation ships with pyannote.audio, which is not installed: {e}") from None
    d = Path(pyannote.audio.__file__).parent / "sample"
    turns = []
    for line in (d / "sample.rttm").read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    return d / "sample.wav", turns


MUSIC_INTRO_S = 4.0  # a real recording under a show's music: the intro before it (its turns move this much)


def _under_music(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A real recording as a show's episode with music: a `MUSIC_INTRO_S` intro, the recording brought to the
    synthetic voices' level (~-24 LUFS; pyannote's sample is -32.5) over a bed a few dB under it, as in the synthetic
    music scenario, and 2 s of outro; clipped to [-1, 1]."""
    intro = int(MUSIC_INTRO_S * SR)
    n = intro + wav.size + 2 * SR
    mix = np.zeros(n, dtype=np.float32)
    mix[intro : intro + wav.size] = normalize_loudness(wav, SR, -24.0)[0]
    mix += _show_music(n, rng, intro, intro + wav.size)
    return np.clip(mix, -1, 1)


def make_recorded_podcast(out_dir: str | Path, *, seed: int = 0) -> PodcastTruth:
    """A feed of real recorded speech: the first 21.7 s of pyannote's two-person sample as it is (`recorded-1`) and
    with a 4 s music intro and a -28 dBFS bed under the speech (`recorded_music-1`), 64 kb/s mp3; the target is
    `speaker91`, enrolled from its later solo turn; the other speaker is the "cohost"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    path, rttm = recorded_conversation()
    wav = load_audio(path, SR)
    a, b = RECORDED_EPISODE
    ep = wav[int(a * SR) : int(b * SR)]
    turns = [Turn("target" if spk == RECORDED_TARGET else "cohost", round(max(s, a) - a, 3),
                  round(min(e, b) - a, 3), "") for s, e, spk in rttm if e > a and s < b]  # fmt: skip
    day0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
    episodes = []
    _to_mp3(ep, out / "recorded-1.mp3")
    episodes.append(EpisodeTruth("recorded-1", "recorded-1.mp3", "recorded 1", round(ep.size / SR, 3),
                                 format_datetime(day0), turns, "recorded"))
    mix = _under_music(ep, rng)
    shifted = [Turn(t.speaker, round(t.start + MUSIC_INTRO_S, 3), round(t.end + MUSIC_INTRO_S, 3), "")
               for t in turns]
    _to_mp3(mix, out / "recorded_music-1.mp3")
    episodes.append(EpisodeTruth("recorded_music-1", "recorded_music-1.mp3", "recorded music 1",
                                 round(mix.size / SR, 3),
                                 format_datetime(day0 + timedelta(days=1)), shifted, "recorded_music"))
    ea, eb = RECORDED_ENROLL
    enrollment = [save_wav(out / "enroll-1.wav", wav[int(ea * SR) : int(eb * SR)], SR)]
    truth = PodcastTruth(out, f"recorded:{RECORDED_TARGET}", "recorded:speaker90", episodes, enrollment,
                         {"target": f"recorded:{RECORDED_TARGET}", "cohost": "recorded:speaker90"})
    truth.save()
    return truth


def meeting_turns(data_dir: str | Path) -> dict[str, tuple[Path, list[tuple[float, float, str]]]]:
    """Real meeting speech with its speakers annotated: pyannote.audio's test clips (AMI meetings, 30 s each, in the
    package's source distribution, not its wheel): {clip: (wav path, [(start, end, speaker)])} from the RTTMs under
    `data_dir` (its `tests/data`). Clip names are folded to ASCII (NFKD) and matched to the files the same way
    (one file is named with an n-tilde where its RTTM says "trn00")."""
    import unicodedata

    d = Path(data_dir)
    rttms = sorted(d.glob("*.rttm"))
    if not rttms:
        raise InputError(f"{d}: no RTTM files (expected pyannote.audio's tests/data from its source distribution)")

    def key(name: str) -> str:
        return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()

    wavs = {key(p.stem): p for p in d.glob("*.wav")}
    clips: dict[str, tuple[Path, list[tuple[float, float, str]]]] = {}
    for rttm in rttms:
        for line in rttm.read_text().splitlines():
            f = line.split()
            if not f or f[0] != "SPEAKER":
                continue
            clip = key(f[1])
            if clip not in wavs:
                raise InputError(f"{rttm}: clip {f[1]!r} has no wav in {d}")
            start = float(f[3])
            clips.setdefault(clip, (wavs[clip], []))[1].append((start, start + float(f[4]), key(f[7])))
    return clips


def make_meeting_podcast(out_dir: str | Path, data_dir: str | Path, target: str, episodes: Sequence[str],
                         absent: Sequence[str], enroll_from: str, *, music: Sequence[str] = (),
                         seed: int = 0) -> PodcastTruth:
    """A feed of real recorded meeting speech (`meeting_turns`): each clip in `episodes` (where `target` speaks) and
    `absent` (where it does not) is an episode as it is, 64 kb/s mp3; the clips in `music` again with a 4 s music
    intro and a -28 dBFS bed under the speech. Every other speaker is "other:<id>" in the truth. The enrollment is
    cut from the show, as a user would: the three longest stretches of the target alone in `enroll_from` (a clip,
    which may also be an episode)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = meeting_turns(data_dir)
    for c in [*episodes, *absent, *music, enroll_from]:
        if c not in clips:
            raise InputError(f"meeting podcast: no clip {c!r} (have {sorted(clips)})")
    day0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
    eps: list[EpisodeTruth] = []

    def turns_of(clip: str, shift: float = 0.0) -> list[Turn]:
        return [Turn("target" if spk == target else f"other:{spk}", round(a + shift, 3), round(b + shift, 3), "")
                for a, b, spk in clips[clip][1]]  # fmt: skip

    for clip in [*episodes, *absent]:
        wav = load_audio(clips[clip][0], SR)
        _to_mp3(wav, out / f"{clip}.mp3")
        eps.append(EpisodeTruth(clip, f"{clip}.mp3", f"meeting {clip}", round(wav.size / SR, 3),
                                format_datetime(day0 + timedelta(days=len(eps))), turns_of(clip),
                                "meeting" if clip in episodes else "absent"))
    for clip in music:
        mix = _under_music(load_audio(clips[clip][0], SR), rng)
        _to_mp3(mix, out / f"{clip}_music.mp3")
        eps.append(EpisodeTruth(f"{clip}_music", f"{clip}_music.mp3", f"meeting {clip} (music)",
                                round(mix.size / SR, 3), format_datetime(day0 + timedelta(days=len(eps))),
                                turns_of(clip, MUSIC_INTRO_S), "meeting_music"))
    ep = EpisodeTruth(enroll_from, "", "", 0.0, "", turns_of(enroll_from))
    spans = sorted(ep.target_only(), key=lambda ab: ab[0] - ab[1])[:3]
    if not spans:
        raise InputError(f"meeting podcast: {target} never speaks alone in {enroll_from}")
    wav = load_audio(clips[enroll_from][0], SR)
    enrollment = [save_wav(out / f"enroll-{k + 1}.wav", wav[int(a * SR) : int(b * SR)], SR)
                  for k, (a, b) in enumerate(spans)]
    truth = PodcastTruth(out, f"meeting:{target}", "meeting:others", eps, enrollment,
                         {"target": f"meeting:{target}"})
    truth.save()
    return truth


def write_feed(path: str | Path, items: Sequence[dict], *, title: str = "Synthetic Podcast") -> Path:
    """Write an RSS 2.0 feed; each item: `title`, `guid`, `url`, optional `length`, `type`, `published`."""
    rows = []
    for it in items:
        length = it.get("length", 0)
        mime = it.get("type", "audio/mpeg")
        rows.append(
            "    <item>\n"
            f"      <title>{escape(it['title'])}</title>\n"
            f"      <guid isPermaLink=\"false\">{escape(it['guid'])}</guid>\n"
            + (f"      <pubDate>{escape(it['published'])}</pubDate>\n" if it.get("published") else "")
            + f"      <enclosure url=\"{escape(it['url'])}\" length=\"{length}\" type=\"{escape(mime)}\"/>\n"
            "    </item>"
        )
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0">\n  <channel>\n'
        f"    <title>{escape(title)}</title>\n    <link>http://127.0.0.1/</link>\n"
        "    <description>voicepipe synthetic podcast</description>\n"
        + "\n".join(rows)
        + "\n  </channel>\n</rss>\n"
    )
    path = Path(path)
    path.write_text(xml)
    return path


def feed_items(truth: PodcastTruth, base_url: str, episodes: Sequence[EpisodeTruth] | None = None) -> list[dict]:
    """Feed items for the podcast's episodes (all by default) served under `base_url`."""
    return [
        {
            "title": ep.title,
            "guid": ep.id,
            "url": f"{base_url}/{ep.file}",
            "length": (truth.dir / ep.file).stat().st_size,
            "published": ep.published,
        }
        for ep in (truth.episodes if episodes is None else episodes)
    ]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def serve_dir(directory: str | Path) -> tuple[str, Callable[[], None]]:
    """Serve `directory` over HTTP on 127.0.0.1 (free port, background thread). Returns (base_url, stop)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="voicepipe-feed-server")
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return base, stop


def serve_feed(directory: str | Path) -> tuple[str, Callable[[], None]]:
    """Serve a `make_podcast` directory and (re)write its `feed.xml` to point at this server.

    Returns (feed_url, stop).
    """
    truth = PodcastTruth.load(directory)
    base, stop = serve_dir(directory)
    write_feed(Path(directory) / "feed.xml", feed_items(truth, base))
    return f"{base}/feed.xml", stop


def _overlap_s(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    return float(sum(max(0.0, min(e, be) - max(s, bs)) for s, e in a for bs, be in b))


def build_feed(truth: PodcastTruth, root: str | Path, codec_model: str | Path, **params: Any) -> BuildResult:
    """`voicepipe corpus build` (`build_local`) over `truth`'s podcast as a user's feed: its episodes (`truth.episodes`,
    which a caller may narrow) as RSS over HTTP on 127.0.0.1, the podcast's enrollment, out/ and store/ under `root`,
    pocketsphinx, the codec at `codec_model`, no validation split. `params`: other `CorpusParams` fields (e.g.
    `separate=False`, `workers=2`, `enroll=[...]`). Returns the `BuildResult`; the feed server stops either way."""
    from voicepipe.corpus.build import build_local
    from voicepipe.corpus.config import CorpusParams

    root = Path(root)
    base, stop = serve_dir(truth.dir)
    try:
        write_feed(truth.dir / "feed.xml", feed_items(truth, base))
        fields = {"speaker": "target", "enroll": [str(p) for p in truth.enrollment], "feeds": [f"{base}/feed.xml"],
                  "out": str(root / "out"), "store_url": str(root / "store"), "asr_backend": "pocketsphinx",
                  "codec_model": str(codec_model), "val_fraction": 0.0, **params}
        return build_local(CorpusParams(**fields), progress=False)
    finally:
        stop()


def score_corpus(corpus_dir: str | Path, truth: PodcastTruth) -> dict:
    """Score a built corpus against the truth.

    purity = target-only seconds inside kept clips / seconds of any speech inside kept clips (silence is neutral;
    a second where the target and someone else both speak counts against purity); recall = target-only seconds
    inside kept clips / target-only seconds of the episodes the build used. `per_episode` holds the same per
    episode (with its scenario).
    """
    rows = [json.loads(line) for line in (Path(corpus_dir) / "manifest.jsonl").read_text().splitlines() if line]
    by_id = {ep.id: ep for ep in truth.episodes}
    kept: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["episode"] in by_id:
            kept.setdefault(r["episode"], []).append((r["start"], r["end"]))
    corpus = json.loads((Path(corpus_dir) / "corpus.json").read_text())
    val = set(corpus.get("val_episodes", []))
    considered = [ep for ep in truth.episodes if ep.id in kept or ep.id in val or ep.id in corpus["target_labels"]]
    per: dict[str, dict] = {}
    for ep in considered:
        k = intervals.union(kept.get(ep.id, []))
        tgt_only = ep.target_only()
        t_in = _overlap_s(k, tgt_only)
        any_in = _overlap_s(k, ep.any_speech())
        tot = sum(b - a for a, b in tgt_only)
        per[ep.id] = {"scenario": ep.scenario, "target_s": t_in, "speech_s": any_in, "target_total_s": tot,
                      "purity": t_in / any_in if any_in else 0.0, "recall": t_in / tot if tot else 0.0}
    target_in = sum(v["target_s"] for v in per.values())
    speech_in = sum(v["speech_s"] for v in per.values())
    target_total = sum(v["target_total_s"] for v in per.values())
    return {
        "kept_speech_s": round(speech_in, 2),
        "target_s": round(target_in, 2),
        "other_s": round(speech_in - target_in, 2),
        "purity": target_in / speech_in if speech_in else 0.0,
        "recall": target_in / target_total if target_total else 0.0,
        "episodes": sorted(per),
        "per_episode": per,
    }
