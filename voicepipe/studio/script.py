"""Recording scripts: one prompt a line, any language; phonemes (espeak-ng through `phonemizer`) for coverage.

A prompt's id is a hash of its text, so takes stay attached to their sentence when a script is edited or reordered.
The default script is the CMU ARCTIC prompt list (`scripts/en_arctic.txt`, source and licence in its header).
"""

from __future__ import annotations

import hashlib
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from voicepipe.errors import InputError

DEFAULT_SCRIPT = Path(__file__).with_name("scripts") / "en_arctic.txt"
MAX_PROMPT_CHARS = 1000
_PHONEMIZER_LOCK = threading.Lock()  # phonemizer's espeak backend wraps one C library instance


def prompt_id(text: str) -> str:
    """Stable id of a prompt: the first 12 hex digits of the sha256 of its NFC text."""
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Prompt:
    """One line of a script."""

    id: str
    index: int
    text: str


@dataclass
class Script:
    """The prompts to record, in order, plus the espeak-ng voice used for their phonemes."""

    prompts: list[Prompt]
    language: str = "en-us"
    name: str = "script"
    text: str = ""  # the file's text as read (stored with the session)
    _phones: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    def phones(self, prompt_ids: list[str] | None = None) -> dict[str, list[str]]:
        """Phoneme sequence (word boundaries dropped) of each prompt (all by default); computed once per prompt."""
        ids = [p.id for p in self.prompts] if prompt_ids is None else prompt_ids
        missing = [i for i in ids if i not in self._phones]
        if missing:
            texts = self.by_id()
            self._phones.update(zip(missing, phonemize([texts[i].text for i in missing], self.language),
                                    strict=True))
        return {i: self._phones[i] for i in ids}


def parse_script(text: str, name: str = "script", language: str = "en-us") -> Script:
    """Prompts from `text`: one per line; blank lines and lines starting with '#' are skipped; whitespace collapsed.

    A repeated line is one prompt (its first position). Raises InputError naming the script when no prompt is left
    or a line is too long to read in one take."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = " ".join(unicodedata.normalize("NFC", raw).split())
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_PROMPT_CHARS:
            raise InputError(f"script {name}: line {lineno} has {len(line)} characters (at most {MAX_PROMPT_CHARS}: "
                             "one sentence or two a line)")
        pid = prompt_id(line)
        if pid in seen:
            continue
        seen.add(pid)
        prompts.append(Prompt(id=pid, index=len(prompts), text=line))
    if not prompts:
        raise InputError(f"script {name}: no prompts (one prompt a line; '#' lines are comments)")
    return Script(prompts=prompts, language=language, name=name, text=text)


def load_script(path: str | Path | None = None, language: str = "en-us") -> Script:
    """Read a script file (UTF-8); None: the default English script (CMU ARCTIC prompts)."""
    path = Path(path) if path is not None else DEFAULT_SCRIPT
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"script {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"script {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise InputError(f"script {path}: unreadable ({e.strerror or e})") from None
    return parse_script(text, name=path.name, language=language)


@lru_cache(maxsize=32)
def _backend(language: str):  # noqa: ANN202 - phonemizer's EspeakBackend
    import logging

    from phonemizer.backend import EspeakBackend

    quiet = logging.getLogger("voicepipe.studio.phonemizer")
    quiet.setLevel(logging.ERROR)  # phonemizer warns about word counts we do not use
    try:
        return EspeakBackend(language, preserve_punctuation=False, with_stress=False,
                             language_switch="remove-flags", words_mismatch="ignore", logger=quiet)
    except RuntimeError as e:  # unknown language or espeak-ng missing
        raise InputError(f"phonemes for language {language!r}: {e}") from None


def phonemize(texts: list[str], language: str = "en-us") -> list[list[str]]:
    """espeak-ng phonemes (IPA, no stress marks) of each text, via `phonemizer`.

    A language espeak-ng does not know falls back to characters (letters without spaces or punctuation), so
    coverage still means something for any script."""
    from phonemizer.separator import Separator

    try:
        backend = _backend(language)
    except InputError:
        return [[c for c in t.lower() if c.isalpha()] for t in texts]
    with _PHONEMIZER_LOCK:
        out = backend.phonemize(texts, separator=Separator(phone=" ", word=" | ", syllable=""), strip=True)
    return [[p for p in line.split() if p != "|"] for line in out]


def coverage(script: Script, recorded_ids: list[str]) -> dict[str, object]:
    """Phoneme and diphone coverage of the recorded prompts against everything the script contains.

    Returns counts, fractions and the script's phonemes not yet recorded (rarest first)."""
    from collections import Counter

    phones = script.phones()
    all_p, all_d = Counter(), set()
    for seq in phones.values():
        all_p.update(seq)
        all_d.update(zip(seq, seq[1:], strict=False))
    got_p, got_d = set(), set()
    for pid in recorded_ids:
        seq = phones.get(pid) or []
        got_p.update(seq)
        got_d.update(zip(seq, seq[1:], strict=False))
    missing = sorted(set(all_p) - got_p, key=lambda p: (all_p[p], p))
    return {
        "phonemes": len(got_p), "phonemes_total": len(all_p), "phoneme_fraction": len(got_p) / max(1, len(all_p)),
        "diphones": len(got_d), "diphones_total": len(all_d), "diphone_fraction": len(got_d) / max(1, len(all_d)),
        "missing_phonemes": missing,
    }
