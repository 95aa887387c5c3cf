"""The studio's take checks and scripts, on real synthetic speech (espeak-ng) with the real VAD, DNSMOS and
PocketSphinx: a good take passes, and each kind of bad take is flagged with its own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.studio import PROMPTS, SR, clipped, read_aloud
from voicepipe.errors import InputError
from voicepipe.studio.checks import check_take
from voicepipe.studio.script import DEFAULT_SCRIPT, coverage, load_script, parse_script, phonemize


@pytest.fixture(scope="module")
def vad():
    from voicepipe.corpus.engines import Vad

    return Vad()


def codes(result: dict, severity: str = "redo") -> set[str]:
    return {i["code"] for i in result["issues"] if i["severity"] == severity}


def run(wav: np.ndarray, text: str, vad, asr=None, dnsmos: bool = False) -> dict:
    return check_take(wav, SR, text, phones=phonemize([text])[0], vad=vad, asr=asr, dnsmos=dnsmos)


def test_a_good_take_passes_every_check(vad, pocketsphinx_asr) -> None:
    r = run(read_aloud(PROMPTS[0]), PROMPTS[0], vad, pocketsphinx_asr, dnsmos=True)
    assert r["verdict"] == "keep", r
    m = r["measures"]
    assert m["wer"] <= 0.5 and m["asr_text"]
    assert m["dnsmos"]["bak"] > 3.0 and m["snr_db"] > 20
    assert 0.5 < m["speech_start_s"] < 1.0 and m["trail_silence_s"] > 0.5
    assert 6 <= m["rate_per_s"] <= 20 and m["rate_unit"] == "phonemes"


def test_clipping_is_flagged(vad) -> None:
    r = run(clipped(read_aloud(PROMPTS[1])), PROMPTS[1], vad)
    assert "clipping" in codes(r) and r["verdict"] == "redo"
    assert r["measures"]["clipped_fraction"] > 0.0005


def test_too_quiet_and_too_loud(vad) -> None:
    assert "too_quiet" in codes(run(read_aloud(PROMPTS[2], gain=0.04), PROMPTS[2], vad))
    hot = read_aloud(PROMPTS[2], gain=1.0)
    hot = 0.995 * hot / np.max(np.abs(hot))  # peaks at -0.04 dBFS, not clipped
    r = run(hot, PROMPTS[2], vad)
    assert "too_loud" in codes(r) and "clipping" not in codes(r)


def test_background_noise_is_flagged_by_snr_and_dnsmos(vad) -> None:
    wav = read_aloud(PROMPTS[0])
    noisy = wav + np.random.default_rng(0).normal(0, 0.03, wav.size).astype(np.float32)
    r = run(noisy, PROMPTS[0], vad, dnsmos=True)
    assert "noise" in codes(r), r
    assert r["measures"]["snr_db"] < 20 and r["measures"]["dnsmos"]["bak"] < 3.0


def test_words_cut_at_the_edges(vad) -> None:
    speech = read_aloud(PROMPTS[0], lead_s=0.0, tail_s=0.0)
    r = run(speech[int(0.35 * SR) : int(-0.4 * SR)], PROMPTS[0], vad)  # recording started/stopped mid-word
    assert {"cut_start", "cut_end"} <= codes(r), r
    long = read_aloud(PROMPTS[0], lead_s=4.0, tail_s=4.0)
    assert {"lead_silence", "trail_silence"} <= codes(run(long, PROMPTS[0], vad), "note")


def test_wrong_words_are_flagged(vad, pocketsphinx_asr) -> None:
    r = run(read_aloud(PROMPTS[2]), PROMPTS[0], vad, pocketsphinx_asr)  # read the wrong sentence
    assert "words" in codes(r) and r["measures"]["wer"] > 0.5


def test_too_fast_and_silence(vad) -> None:
    from voicepipe.corpus.synthetic import speak

    fast = np.concatenate([np.zeros(SR, np.float32), speak(PROMPTS[1], "en-us+f2", speed=450) * 0.5,
                           np.zeros(SR, np.float32)])
    assert "too_fast" in codes(run(fast, PROMPTS[1], vad))
    assert codes(run(np.zeros(3 * SR, np.float32), PROMPTS[1], vad)) == {"silence"}
    assert codes(run(np.zeros(100, np.float32), PROMPTS[1], vad)) == {"empty"}


def test_default_script_is_cmu_arctic_with_its_licence() -> None:
    head = DEFAULT_SCRIPT.read_text().split("\n", 12)
    assert any("CMU ARCTIC" in line for line in head) and any("Licence" in line for line in head)
    s = load_script()
    assert len(s.prompts) == 1132 and s.prompts[0].text == "Author of the danger trail, Philip Steels, etc."
    assert len({p.id for p in s.prompts}) == 1132


def test_any_language_script_and_coverage(tmp_path: Path) -> None:
    de = parse_script("# Deutsch\nDer Hund läuft über die Straße.\n\nIch möchte einen Kaffee, bitte.\n", "de.txt", "de")
    assert [p.index for p in de.prompts] == [0, 1]
    phones = de.phones()
    assert all(phones.values()) and "yː" in phones[de.prompts[0].id]  # über
    assert "ç" in phones[de.prompts[1].id]  # ich
    cov = coverage(de, [de.prompts[0].id])
    assert 0 < cov["phonemes"] < cov["phonemes_total"] and cov["missing_phonemes"]
    assert coverage(de, [p.id for p in de.prompts])["phoneme_fraction"] == 1.0
    # a language espeak-ng does not know: characters stand in for phonemes
    assert phonemize(["Ab c"], "xx-nonexistent") == [["a", "b", "c"]]
    # ids follow the text, not the line: a reordered script keeps its takes
    assert parse_script("b\na\n").by_id().keys() == parse_script("a\nb\n").by_id().keys()


def test_bad_scripts_are_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"script empty.txt: no prompts"):
        parse_script("# only comments\n\n", "empty.txt")
    with pytest.raises(InputError, match=r"script .*missing.txt: no such file"):
        load_script(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt: not UTF-8"):
        load_script(tmp_path / "latin1.txt")
