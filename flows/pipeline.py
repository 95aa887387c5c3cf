"""`voice_pipeline`: corpus -> train -> evaluate -> promote; `train_and_evaluate`: the same from a stored corpus.

    build_corpus(params.corpus)                         flows/corpus.py  (emits voicepipe.corpus.changed)
        -> train_and_evaluate(speaker, corpus_version)  this file        (the event's trigger runs it alone)
              -> train_voice(...)                       flows/train.py
              -> evaluate_checkpoints(...)              flows/evaluate.py (selects and promotes voices/<speaker>)

Parameters are pydantic models, so the Prefect UI renders a form for each deployment.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from tasks.common import publish_markdown, publish_table, task_runner
from voicepipe.corpus.config import CorpusParams


class TrainStep(BaseModel):
    """Training settings of a pipeline run (defaults: the v8 recipe on the released base model)."""

    base: str = Field("Qwen/Qwen3-TTS-12Hz-1.7B-Base", description="Base model dir or a name resolve_model knows.")
    config: str = Field("v8", description="Training config: a name in voicepipe/train/configs or a YAML path.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Training config overrides (epochs, lr, …).")
    out: str | None = Field(None, description="Checkpoint dir; default <home>/runs/<speaker>/<corpus version>.")


class EvaluateStep(BaseModel):
    """Evaluation settings of a pipeline run."""

    reference: str | None = Field(None, description="A reference checkpoint compared in the report (e.g. v3 epoch 3).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="EvalConfig overrides (asr, wer_ceiling, …).")
    promote: bool = Field(True, description="Promote the selected checkpoint to voices/<speaker>.")


class PipelineParams(BaseModel):
    """Everything one end-to-end voice run needs."""

    corpus: CorpusParams
    train: TrainStep = Field(default_factory=TrainStep)
    evaluate: EvaluateStep = Field(default_factory=EvaluateStep)
    dask_address: str | None = Field(
        None, description="Run per-episode ingestion on this Dask scheduler (tcp://host:8786, or 'local')."
    )


def _field(obj: Any, name: str) -> Any:
    """Read `name` from a pydantic model, dataclass or dict result."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def corpus_ref(speaker: str, corpus_version: str) -> str:
    """The store ref of one built corpus version (written by tasks.events.notify_corpus_version)."""
    from tasks.events import version_ref_name

    return version_ref_name(speaker.lower(), corpus_version)


def speaker_settings_ref(speaker: str) -> str:
    """Store ref of a speaker's retraining settings: a JSON object `{"train": {...}, "evaluate": {...}}`."""
    return f"speakers/{speaker.lower()}/settings"


def effective_steps(store: Any, speaker: str, train: TrainStep, evaluate: EvaluateStep,
                    use_stored: bool = True) -> tuple[TrainStep, EvaluateStep, str]:
    """The train/evaluate settings a run uses: the speaker's settings in the store (`speakers/<speaker>/settings`,
    written by `voice-pipeline` or `voicepipe store put settings.json --ref speakers/<speaker>/settings`) over the
    run's parameters (the deployment's defaults in prefect.yaml, or what the UI form says). Returns the source too."""
    from voicepipe.errors import InputError, StoreError

    ref = store.get_ref(speaker_settings_ref(speaker)) if use_stored else None
    if ref is None:
        return train, evaluate, "run parameters (deployment defaults)"
    try:
        stored = store.get_json(ref["sha"])
        t = TrainStep.model_validate({**train.model_dump(), **(stored.get("train") or {}), "out": train.out})
        e = EvaluateStep.model_validate({**evaluate.model_dump(), **(stored.get("evaluate") or {})})
    except (StoreError, AttributeError, ValueError) as err:
        why = str(err).splitlines()[0]
        raise InputError(f"speaker settings {speaker_settings_ref(speaker)}: unusable ({why})") from None
    return t, e, f"store ref {speaker_settings_ref(speaker)} ({ref['sha'][:12]}, set {ref.get('set_at')})"


def record_speaker_settings(store: Any, speaker: str, train: TrainStep, evaluate: EvaluateStep) -> None:
    """Keep the settings of an explicit run as the speaker's: the triggered retrain of a later corpus uses them."""
    body = {"train": train.model_dump(exclude={"out"}), "evaluate": evaluate.model_dump()}
    ref = store.put_json(body, step="pipeline.speaker-settings", params={"speaker": speaker}, name="settings.json")
    current = store.get_ref(speaker_settings_ref(speaker))
    if current is None or current["sha"] != ref.sha256:
        store.set_ref(speaker_settings_ref(speaker), ref)


@flow(name="train-and-evaluate", log_prints=True)
def train_and_evaluate(
    speaker: str,
    corpus_version: str,
    train: TrainStep = TrainStep(),
    evaluate: EvaluateStep = EvaluateStep(),
    store_url: str | None = None,
    use_speaker_settings: bool = True,
) -> dict[str, Any]:
    """Fine-tune on a stored corpus version (or a unique prefix of it), evaluate every checkpoint, promote the best
    (gpu-pool). With `use_speaker_settings`, the speaker's settings in the store override `train`/`evaluate`."""
    from flows.evaluate import evaluate_checkpoints
    from flows.train import train_voice
    from tasks.common import failed
    from tasks.preflight import check_models, evaluate_needs, train_needs
    from voicepipe.config import load_settings
    from voicepipe.errors import InputError, VoicepipeError
    from voicepipe.pipeline.audit import resolve_corpus_version
    from voicepipe.store import open_store

    speaker = speaker.lower()
    settings = load_settings(**({"store_url": store_url} if store_url else {}))
    store = open_store(settings)
    try:
        version = resolve_corpus_version(corpus_version, store) or corpus_version
        ref_name = corpus_ref(speaker, version)
        ref = store.get_ref(ref_name)
        if ref is None:
            raise InputError(f"corpus {speaker}@{corpus_version}: no store ref {ref_name} (build the corpus first)")
        train, evaluate, source = effective_steps(store, speaker, train, evaluate, use_speaker_settings)
        publish_table("train-and-evaluate-settings", [
            {"setting": "base model", "value": train.base}, {"setting": "training config", "value": train.config},
            {"setting": "training overrides", "value": str(train.overrides)},
            {"setting": "evaluation overrides", "value": str(evaluate.overrides)},
            {"setting": "reference", "value": str(evaluate.reference)},
            {"setting": "promote", "value": str(evaluate.promote)}, {"setting": "from", "value": source},
        ], description=f"settings of this retrain of {speaker} (from {source})")
        print(f"train-and-evaluate {speaker} @ {version[:16]}: base {train.base}, config {train.config}, "
              f"evaluation {evaluate.overrides or 'defaults'} (from {source})")
        check_models(train_needs(train.base) + evaluate_needs(str(evaluate.overrides.get("asr", "auto")), train.base),
                     store_url)
    except VoicepipeError as e:
        return failed(e)
    out = train.out or str(settings.home / "runs" / speaker / version)
    trained = train_voice(
        corpus=f"store:{ref_name}",
        base=train.base,
        speaker=speaker,
        out=out,
        config=train.config,
        overrides=train.overrides,
        store_url=store_url,
    )
    evaluated = evaluate_checkpoints(
        checkpoints=_field(trained, "out_dir") or out,
        corpus=f"store:{ref_name}",
        speaker=speaker,
        base=train.base,
        reference=evaluate.reference,
        overrides=evaluate.overrides,
        promote=evaluate.promote,
        store_url=store_url,
    )
    voice = store.get_ref(f"voices/{speaker}")
    summary = {
        "speaker": speaker,
        "corpus_version": version,
        "corpus_sha": ref["sha"],
        "checkpoints": str(_field(trained, "out_dir") or out),
        "chosen": _field(evaluated, "chosen"),
        "voice_sha": voice["sha"] if voice else None,
    }
    publish_table("train-and-evaluate-summary", [summary], description=f"{speaker} @ corpus {version[:16]}")
    return summary


@flow(name="voice-pipeline", log_prints=True)
def voice_pipeline(params: PipelineParams) -> dict[str, Any]:
    """Build the corpus, then train, evaluate and promote on exactly that corpus version."""
    from flows.corpus import build_corpus
    from tasks.common import failed
    from tasks.preflight import check_models, corpus_needs, evaluate_needs, train_needs
    from voicepipe.errors import VoicepipeError

    log = get_run_logger()
    try:  # every model of every stage, before the corpus build starts
        check_models(corpus_needs(params.corpus) + train_needs(params.train.base)
                     + evaluate_needs(str(params.evaluate.overrides.get("asr", "auto")), params.train.base),
                     params.corpus.store_url)
    except VoicepipeError as e:
        return failed(e)
    from voicepipe.store import open_store

    store = open_store(params.corpus.store_url) if params.corpus.store_url else open_store()
    record_speaker_settings(store, params.corpus.speaker, params.train, params.evaluate)
    builder = build_corpus
    if params.dask_address:
        builder = build_corpus.with_options(task_runner=task_runner(params.dask_address))
    built = builder(params.corpus)
    version = _field(built, "version")
    log.info("corpus %s version %s", params.corpus.speaker, version)
    result = train_and_evaluate(
        speaker=params.corpus.speaker,
        corpus_version=version,
        train=params.train,
        evaluate=params.evaluate,
        store_url=params.corpus.store_url,
        use_speaker_settings=False,  # this run's own settings (just recorded as the speaker's)
    )
    publish_markdown(
        "voice-pipeline-summary",
        "\n".join(
            [
                f"## Voice `{params.corpus.speaker}`",
                f"- corpus version `{version}` ({_field(built, 'utterances')} utterances, "
                f"{_field(built, 'hours')} h)",
                f"- checkpoints `{result['checkpoints']}`, chosen `{result['chosen']}`",
                f"- registry `voices/{params.corpus.speaker}` -> `{result['voice_sha']}`",
            ]
        ),
        description="voice pipeline result",
    )
    return {"corpus_version": version, **result}
