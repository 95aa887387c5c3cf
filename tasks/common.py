"""Shared Prefect helpers for every stage: audit artifacts and task defaults.

`publish_markdown`, `publish_table`, `publish_link` create Prefect artifacts (shown in the UI under the
flow run) when called inside a flow or task run, and do nothing otherwise, so the same task code runs in
plain Python tests. Artifact keys must match Prefect's `^[a-z0-9-]*$`; `artifact_key` sanitizes any
string into that form (e.g. "corpus/Alice v2" -> "corpus-alice-v2").

Task defaults:
- `IO_RETRIES`: keyword arguments for `@task(**IO_RETRIES)` on tasks that read/write the store, the network
  or the filesystem: 3 retries with exponential backoff and jitter. `VOICEPIPE_RETRY_DELAY_S` scales the
  first delay (tests set it to 0).
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

__all__ = [
    "IO_RETRIES",
    "artifact_key",
    "in_run_context",
    "input_cache",
    "io_retry_delays",
    "publish_link",
    "publish_markdown",
    "publish_table",
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


def publish_link(key: str, uri: str, description: str | None = None) -> UUID | None:
    """Attach a link artifact pointing at a stored object (s3://, file://, http://); a no-op outside a run."""
    if not in_run_context():
        return None
    from prefect.artifacts import create_link_artifact

    return create_link_artifact(link=uri, link_text=uri, key=artifact_key(key), description=description)


def io_retry_delays(retries: int = 3) -> list[float]:
    """Backoff delays in seconds for I/O retries; `VOICEPIPE_RETRY_DELAY_S` sets the first (default 2)."""
    base = float(os.environ.get("VOICEPIPE_RETRY_DELAY_S", "2"))
    if base <= 0:
        return [0.0] * retries
    return list(exponential_backoff(backoff_factor=base)(retries))


IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": io_retry_delays(3),
    "retry_jitter_factor": 0.2,
}


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
