"""Shared Prefect helpers for every stage: audit artifacts and task defaults.

`publish_markdown`, `publish_table`, `publish_link` create Prefect artifacts (shown in the UI under the
flow run) when called inside a flow or task run, and do nothing otherwise, so the same task code runs in
plain Python tests. Artifact keys must match Prefect's `^[a-z0-9-]*$`; `artifact_key` sanitizes any
string into that form (e.g. "corpus/Alice v2" -> "corpus-alice-v2").

Task defaults:
- `IO_RETRIES`: keyword arguments for `@task(**IO_RETRIES)` on tasks that read/write the store, the network
  or the filesystem: 3 retries with exponential backoff and jitter. `VOICEPIPE_RETRY_DELAY_S` scales the
  first delay (tests set it to 0). Errors that cannot succeed on a retry (bad input, a missing model, bad
  settings: `InputError`, `ModelError`, `ConfigError`) are not retried (`retry_unless_permanent`).
- `failed(err)`: the Failed state a flow returns for a user-facing error, its one line as the state message
  (what the UI shows on the run), instead of "Flow run encountered an exception: …".
- `input_cache(*exclude)`: a Prefect cache policy keyed on the task's source and inputs (minus excluded
  handles), so an unchanged input is not processed twice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.tasks import exponential_backoff

from voicepipe.errors import ConfigError, InputError, ModelError

__all__ = [
    "IO_RETRIES",
    "failed",
    "retry_unless_permanent",
    "settle",
    "artifact_key",
    "in_run_context",
    "input_cache",
    "io_retry_delays",
    "publish_link",
    "publish_markdown",
    "publish_table",
    "Progress",
    "task_runner",
]

_KEY_BAD = re.compile(r"[^a-z0-9-]+")
_MAX_KEY = 100


def artifact_key(key: str) -> str:
    """Turn any string into a valid Prefect artifact key (lowercase letters, digits and dashes)."""
    out = _KEY_BAD.sub("-", key.strip().lower()).strip("-")
    out = re.sub(r"-{2,}", "-", out)[:_MAX_KEY].strip("-")
    if not out:
        raise ValueError(f"artifact key {key!r} has no usable characters (need letters or digits)")
    return out


def in_run_context() -> bool:
    """True inside a Prefect flow run or task run (where artifacts can be attached)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish_markdown(key: str, md: str, description: str | None = None) -> UUID | None:
    """Attach a markdown artifact (a step's summary); a no-op outside a run. Returns the artifact id."""
    if not in_run_context():
        return None
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(markdown=md, key=artifact_key(key), description=description)


def publish_table(
    key: str, rows: Iterable[Mapping[str, Any]] | Mapping[str, list[Any]], description: str | None = None
) -> UUID | None:
    """Attach a table artifact (list of row dicts, or dict of columns); a no-op outside a run."""
    if not in_run_context():
        return None
    from prefect.artifacts import create_table_artifact

    table: Any = {k: list(v) for k, v in rows.items()} if isinstance(rows, Mapping) else [dict(r) for r in rows]
    return create_table_artifact(table=table, key=artifact_key(key), description=description)


def publish_link(key: str, uri: str, description: str | None = None, text: str | None = None) -> UUID | None:
    """Attach a link artifact (give a URL a browser can follow: `voicepipe.store.links`); a no-op outside a run.
    `text` is what the UI shows (default: the URL, shortened when it is a long presigned one)."""
    if not in_run_context():
        return None
    from prefect.artifacts import create_link_artifact

    shown = text or (uri if len(uri) <= 120 else uri.split("?", 1)[0])
    return create_link_artifact(link=uri, link_text=shown, key=artifact_key(key), description=description)


class Progress:
    """A Prefect progress artifact (the bar on the run's Artifacts tab) plus a log line, for long loops in domain
    code, which stays Prefect-free: pass `progress.update` (or a small adapter) as its callback.

    Updates are throttled to one per `every_s` seconds (and the last one); a no-op outside a run.
    """

    def __init__(self, key: str, description: str, every_s: float = 5.0) -> None:
        import time

        self.key, self.description, self.every_s = artifact_key(key), description, every_s
        self._last = time.monotonic() - every_s
        self.id: UUID | None = None
        if in_run_context():
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(progress=0.0, key=self.key, description=description)

    def update(self, done: float, total: float, note: str = "") -> None:
        """Report `done` of `total` (units of the loop: steps, samples), with an optional note for the log."""
        import time

        if self.id is None:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.every_s:
            return
        self._last = now
        from prefect import get_run_logger
        from prefect.artifacts import update_progress_artifact

        pct = 100.0 * min(max(done / total, 0.0), 1.0) if total else 100.0
        update_progress_artifact(self.id, progress=pct, description=f"{self.description}: {note}".rstrip(": "))
        get_run_logger().info("%s: %d/%d %s", self.description, done, total, note)

    def finish(self, note: str = "done") -> None:
        """Mark the loop finished (also when it stopped early: early stopping, a failed model)."""
        self.update(1, 1, note)


def io_retry_delays(retries: int = 3) -> list[float]:
    """Backoff delays in seconds for I/O retries; `VOICEPIPE_RETRY_DELAY_S` sets the first (default 2)."""
    base = float(os.environ.get("VOICEPIPE_RETRY_DELAY_S", "2"))
    if base <= 0:
        return [0.0] * retries
    return list(exponential_backoff(backoff_factor=base)(retries))


PERMANENT_ERRORS: tuple[type[Exception], ...] = (InputError, ModelError, ConfigError)


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed try unless its error cannot succeed on a retry."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as e:  # noqa: BLE001 - only inspected
            exc = e
    return not isinstance(exc, PERMANENT_ERRORS)


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": io_retry_delays(3),
    "retry_jitter_factor": 0.2,
    "retry_condition_fn": retry_unless_permanent,
}


def one_line(err: BaseException) -> str:
    """`ModelError: demucs model htdemucs: …`: the error's type and its first line."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def failed(err: BaseException) -> Any:
    """A Failed state carrying `err` with its one line as the message; a flow returns it to end at once.
    Callers of the flow (a parent flow, the CLI) still get `err` raised from the run's result."""
    from prefect.states import Failed

    return Failed(message=one_line(err), data=err)


def input_cache(*exclude: str) -> CachePolicy:
    """Cache policy keyed on the task's source and its inputs, minus the parameters named in `exclude`.

    Pass content hashes (sha256 of an episode, a corpus version) as the task's inputs so the key is the
    content, not a path or a timestamp; exclude handles such as a store or settings object.
    Use as `@task(cache_policy=input_cache("store"), persist_result=True)`.
    """
    inputs: CachePolicy = INPUTS
    for name in exclude:
        inputs = inputs - name
    return TASK_SOURCE + inputs


def task_runner(dask_address: str | None = None, *, workers: int | None = None) -> Any:
    """The task runner for fan-out work (per-episode ingestion).

    - `dask_address` = "tcp://host:8786": a `prefect_dask.DaskTaskRunner` on that existing Dask cluster
      (workers on several machines; each needs this repo + the VOICEPIPE_* store settings);
    - `dask_address` = "local": a DaskTaskRunner that starts a temporary LocalCluster with `workers` workers;
    - None (default): Prefect's ThreadPoolTaskRunner with `workers` threads (the local default).
    `VOICEPIPE_DASK_ADDRESS` supplies `dask_address` when the argument is None (for deployments).
    Use as `build_corpus.with_options(task_runner=task_runner(addr))(params)`.
    """
    dask_address = dask_address or os.environ.get("VOICEPIPE_DASK_ADDRESS") or None
    if dask_address is None:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address == "local":
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers or 2, "threads_per_worker": 1})
    return DaskTaskRunner(address=dask_address)


def settle(futures: Iterable[Any]) -> BaseException | None:
    """Wait for every task future; return the first failure's exception (None when all completed).

    Tasks downstream of a failed one never run: Prefect leaves them PENDING ("NotReady") for ever, drawing open
    bars on the run's timeline. They are moved to Cancelled here, with the reason, so a failed run leaves no
    orphaned task behind.
    """
    from prefect.futures import wait

    futures = list(futures)
    wait(futures)
    pending = [f for f in futures if f.state.is_pending() or f.state.is_scheduled()]
    if pending:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            for f in pending:
                why = f"not run: {f.state.message or 'an upstream task failed'}"
                _cancel(client, f.task_run_id, Cancelled(message=why))
    for f in futures:
        if f.state.is_failed() or f.state.is_crashed():
            err = f.state.result(raise_on_failure=False)
            return err if isinstance(err, BaseException) else RuntimeError(f.state.message or "task failed")
    return None


def _cancel(client: Any, task_run_id: UUID, state: Any, wait_s: float = 20.0) -> None:
    """Set a never-run task's Cancelled state. The server records task runs from events, asynchronously: a run that
    was only ever NotReady may not exist there yet (404), so wait for it a little; a cleanup that still cannot be
    done is logged, never raised over the failure the flow is reporting."""
    import time

    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
    from prefect.logging import get_run_logger

    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.set_task_run_state(task_run_id, state, force=True)
            return
        except (ObjectNotFound, PrefectHTTPStatusError) as e:
            missing = isinstance(e, ObjectNotFound) or getattr(e.response, "status_code", None) == 404
            if not missing or time.monotonic() > deadline:
                get_run_logger().warning("could not mark task run %s cancelled: %s", task_run_id, e)
                return
            time.sleep(0.25)
