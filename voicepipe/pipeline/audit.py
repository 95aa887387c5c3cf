"""`voicepipe audit RUN_ID|CORPUS_VERSION|SHA`: what was produced, from what, with which parameters.

Sources:
- a Prefect flow run id (UUID): the run (flow, deployment, state, parameters), its task runs, its artifacts and
  its subflow runs, read from the Prefect API (PREFECT_API_URL, or the local ephemeral database when unset);
  then the store lineage of every stored object the run's artifacts/parameters/result name by sha256;
- a corpus version, or a unique prefix of it: the store ref `corpus/<speaker>/versions/<version>` (written once,
  by the run that built the version), that run read back from the Prefect API, later runs that found the same
  version (`corpus/<speaker>/rebuilds/<version>/<run>`), the corpus tree's lineage, and the voices trained from it;
- a sha256 or a unique prefix of one: that object's sidecar and lineage.

`audit(target)` returns a plain dict (JSON-able); `render(report)` turns it into readable text.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from typing import Any

from voicepipe.errors import InputError, StoreError, VoicepipeError

SHA_RE = re.compile(r"\b[0-9a-f]{64}\b")
MAX_LINEAGE_ROWS = 40


def _store(store: Any = None, settings: Any = None) -> Any:
    """An open ArtifactStore from an instance, a URL, or settings (default: `load_settings()`)."""
    if store is not None and hasattr(store, "lineage"):
        return store
    from voicepipe.store import open_store

    if store is not None:
        return open_store(store)
    if settings is None:
        from voicepipe.config import load_settings

        settings = load_settings()
    return open_store(settings)


def _as_uuid(target: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(target)
    except ValueError:
        return None


def summarize_lineage(store: Any, sha: str, max_rows: int = MAX_LINEAGE_ROWS) -> dict[str, Any]:
    """An object's sidecar plus its lineage, grouped: first `max_rows` entries and counts per step at depth>0."""
    try:
        rows = store.lineage(sha)
    except StoreError as e:
        return {"sha256": sha, "error": str(e)}
    head = rows[0]
    ancestors = rows[1:]
    steps = Counter(r.get("step", "?") if not r.get("missing") else "(missing sidecar)" for r in ancestors)
    keep = ["sha256", "name", "step", "params", "inputs", "created", "size", "depth", "missing", "code_version"]
    return {
        "sha256": sha,
        "object": {k: head.get(k) for k in keep if k in head},
        "ancestors_by_step": dict(steps),
        "ancestors": [{k: r.get(k) for k in keep if k in r} for r in ancestors[:max_rows]],
        "ancestors_total": len(ancestors),
    }


# ---------------------------------------------------------------------------------------------- Prefect side
def _flow_run_report(client: Any, run_id: uuid.UUID, depth: int = 0) -> dict[str, Any]:
    """One flow run with its task runs, artifacts and (recursively) subflow runs, from the Prefect API."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    run = client.read_flow_run(run_id)
    flow = client.read_flow(run.flow_id)
    deployment = None
    if run.deployment_id:
        try:
            deployment = client.read_deployment(run.deployment_id).name
        except Exception:  # a deleted deployment must not stop the audit
            deployment = str(run.deployment_id)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
    )
    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
    )
    state = run.state
    return {
        "id": str(run.id),
        "name": run.name,
        "flow": flow.name,
        "deployment": deployment,
        "work_pool": run.work_pool_name,
        "state": state.type.value if state else None,
        "state_message": state.message if state else None,
        "start_time": str(run.start_time) if run.start_time else None,
        "end_time": str(run.end_time) if run.end_time else None,
        "parameters": run.parameters,
        "tags": list(run.tags or []),
        "task_runs": sorted(
            (
                {
                    "name": t.name,
                    "state": t.state.type.value if t.state else None,
                    "state_name": t.state.name if t.state else None,
                    "attempts": t.run_count,
                }
                for t in tasks
            ),
            key=lambda t: t["name"],
        ),
        "artifacts": [
            {"key": a.key, "type": a.type, "description": a.description, "data": a.data}
            for a in sorted(artifacts, key=lambda a: (a.key or "", str(a.created)))
        ],
        "subflow_runs": [_flow_run_report(client, c.id, depth + 1) for c in children] if depth < 3 else [],
    }


def _shas_in(obj: Any) -> set[str]:
    """Every sha256-looking hex string inside a JSON-able object."""
    return set(SHA_RE.findall(str(obj)))


def audit_flow_run(run_id: str | uuid.UUID, store: Any = None) -> dict[str, Any]:
    """Audit a Prefect flow run: run, tasks, artifacts, subflows, and the lineage of the objects they name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    rid = run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    try:
        with get_client(sync_client=True) as client:
            report = _flow_run_report(client, rid)
    except ObjectNotFound:
        raise InputError(f"flow run {rid}: not found on the Prefect API (is PREFECT_API_URL set?)") from None
    except VoicepipeError:
        raise
    except Exception as e:  # httpx connection errors etc.: one line naming the target
        raise VoicepipeError(f"flow run {rid}: cannot read it from the Prefect API ({type(e).__name__}: {e})") from e
    out: dict[str, Any] = {"kind": "flow_run", "target": str(rid), "flow_run": report, "objects": []}
    if store is not None:
        seen = _shas_in(report)
        out["objects"] = [summarize_lineage(store, s) for s in sorted(seen) if _exists(store, s)]
    return out


def _exists(store: Any, sha: str) -> bool:
    try:
        return bool(store.exists(sha))
    except StoreError:
        return False


# ---------------------------------------------------------------------------------------------- store side
def corpus_versions(store: Any) -> dict[str, list[dict[str, Any]]]:
    """Every recorded corpus version -> the refs that record it (`versions/<v>` first, then `rebuilds/<v>/…`)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in store.list_refs("corpus/"):
        v = (r.get("extra") or {}).get("version")
        if v and ("/versions/" in r["name"] or "/rebuilds/" in r["name"]):
            out.setdefault(str(v), []).append(r)
    return out


def resolve_corpus_version(target: str, store: Any) -> str | None:
    """The corpus version `target` names: the version itself or a unique prefix of it (logs print 16 digits).
    None when no recorded version starts with it; InputError when several do."""
    versions = corpus_versions(store)
    if target in versions:
        return target
    hits = sorted(v for v in versions if v.startswith(target))
    if len(hits) > 1:
        raise InputError(f"corpus version {target!r}: ambiguous prefix ({len(hits)} versions: "
                         f"{', '.join(h[:16] for h in hits[:5])}); give more digits")
    return hits[0] if hits else None


def _run_summary(run_id: str) -> dict[str, Any]:
    """The flow run's name, deployment, state and times from the Prefect API; `error` when it cannot be read."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(uuid.UUID(run_id))
            deployment = None
            if run.deployment_id:
                try:
                    deployment = client.read_deployment(run.deployment_id).name
                except Exception:  # a deleted deployment must not stop the audit
                    deployment = str(run.deployment_id)
            return {"id": run_id, "name": run.name, "deployment": deployment,
                    "state": run.state.type.value if run.state else None,
                    "start_time": str(run.start_time) if run.start_time else None,
                    "end_time": str(run.end_time) if run.end_time else None}
    except Exception as e:  # no server, run deleted: the store's record still stands
        return {"id": run_id, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}


def audit_corpus_version(version: str, store: Any, prefect_api: bool = True) -> dict[str, Any]:
    """Audit a corpus version (or a unique prefix of it): which speaker, which corpus tree, its lineage, the run
    that built it (from the Prefect API), later runs that found the same version, and voices trained from it."""
    resolved = resolve_corpus_version(version, store)
    if resolved is None:
        raise InputError(f"corpus version {version!r}: no store ref records it (corpus/<speaker>/versions/…)")
    version = resolved
    refs = corpus_versions(store)[version]
    firsts = [r for r in refs if "/versions/" in r["name"]] or refs[:1]
    rebuilds = [r for r in refs if "/rebuilds/" in r["name"]]
    corpora = []
    for r in firsts:
        extra = r.get("extra") or {}
        entry = {"corpus_sha": r["sha"], "refs": [r["name"]], **extra, "set_at": r.get("set_at"),
                 **summarize_lineage(store, r["sha"])}
        if extra.get("flow_run_id") and prefect_api:
            entry["built_by"] = _run_summary(str(extra["flow_run_id"]))
        entry["rebuilds"] = [{"ref": b["name"], "corpus_sha": b["sha"], "set_at": b.get("set_at"),
                              "flow_run_id": (b.get("extra") or {}).get("flow_run_id")}
                             for b in rebuilds if (b.get("extra") or {}).get("speaker") == extra.get("speaker")]
        entry["voices"] = _voices_from(store, r["sha"], version)
        corpora.append(entry)
    return {"kind": "corpus_version", "target": version, "corpora": corpora}


def _voices_from(store: Any, corpus_sha: str, version: str) -> list[dict[str, Any]]:
    """Voice registry entries whose extra names this corpus version or whose lineage contains the corpus tree."""
    out = []
    for ref in store.list_refs("voices/"):
        extra = ref.get("extra") or {}
        hit = version in {str(extra.get("corpus_version")), str(extra.get("version"))}
        if not hit:
            try:
                hit = any(r.get("sha256") == corpus_sha for r in store.lineage(ref["sha"]))
            except StoreError:
                hit = False
        if hit:
            out.append({"ref": ref["name"], "sha": ref["sha"], "set_at": ref.get("set_at"), "extra": extra})
    return out


def audit(target: str, *, store: Any = None, settings: Any = None, prefect_api: bool = True) -> dict[str, Any]:
    """Audit a flow run id, a corpus version or an object sha256 (see module docstring)."""
    target = target.strip()
    if not target:
        raise InputError("audit target: empty (give a flow run id, a corpus version or a sha256)")
    rid = _as_uuid(target)
    if rid is not None:
        st = None
        try:
            st = _store(store, settings)
        except VoicepipeError:
            st = None  # the run is still auditable from the Prefect API alone
        return audit_flow_run(rid, store=st)
    st = _store(store, settings)
    if re.fullmatch(r"[0-9a-f]{64}", target) and _exists(st, target):
        if resolve_corpus_version(target, st) is None:
            return {"kind": "object", "target": target, **summarize_lineage(st, target)}
    if resolve_corpus_version(target, st) is not None:
        return audit_corpus_version(target, st, prefect_api=prefect_api)
    if re.fullmatch(r"[0-9a-f]{4,63}", target.lower()):  # a unique prefix of an object's sha256
        try:
            sha = st.resolve(target)
        except StoreError as e:
            raise InputError(f"audit {target}: no corpus version starts with it, and {e}") from None
        return {"kind": "object", "target": sha, **summarize_lineage(st, sha)}
    return audit_corpus_version(target, st, prefect_api=prefect_api)


# ---------------------------------------------------------------------------------------------- rendering
def _fmt_params(p: Any, width: int = 110) -> str:
    import json

    s = json.dumps(p, sort_keys=True, default=str)
    return s if len(s) <= width else s[: width - 1] + "…"


def _render_lineage(obj: dict[str, Any], indent: str = "  ") -> list[str]:
    if "error" in obj:
        return [f"{indent}{obj['sha256'][:12]}  ERROR {obj['error']}"]
    o = obj["object"]
    lines = [
        f"{indent}{o.get('sha256', '')[:12]}  {o.get('name') or ''}  step={o.get('step')}  created={o.get('created')}",
        f"{indent}  params: {_fmt_params(o.get('params') or {})}",
        f"{indent}  code: {_fmt_params(o.get('code_version') or {})}",
    ]
    if obj["ancestors_total"]:
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(obj["ancestors_by_step"].items()))
        lines.append(f"{indent}  made from {obj['ancestors_total']} ancestor object(s): {counts}")
        for a in obj["ancestors"]:
            if a.get("missing"):
                lines.append(f"{indent}    {'  ' * (a['depth'] - 1)}<- {a['sha256'][:12]}  (sidecar missing)")
            else:
                lines.append(
                    f"{indent}    {'  ' * (a['depth'] - 1)}<- {a['sha256'][:12]}  {a.get('name') or ''}  "
                    f"step={a.get('step')}  params={_fmt_params(a.get('params') or {}, 70)}"
                )
        if obj["ancestors_total"] > len(obj["ancestors"]):
            lines.append(f"{indent}    … {obj['ancestors_total'] - len(obj['ancestors'])} more")
    return lines


def _render_run(run: dict[str, Any], indent: str = "") -> list[str]:
    lines = [
        f"{indent}flow run {run['id']} ({run['name']}): flow={run['flow']} deployment={run['deployment']} "
        f"pool={run['work_pool']}",
        f"{indent}  state: {run['state']}{' - ' + run['state_message'] if run['state_message'] else ''}",
        f"{indent}  time: {run['start_time']} -> {run['end_time']}",
        f"{indent}  parameters: {_fmt_params(run['parameters'])}",
    ]
    if run["task_runs"]:
        states = Counter(t["state"] for t in run["task_runs"])
        retried = [t["name"] for t in run["task_runs"] if (t["attempts"] or 0) > 1]
        cached = sum(1 for t in run["task_runs"] if t["state_name"] == "Cached")
        lines.append(
            f"{indent}  task runs: {len(run['task_runs'])} ({', '.join(f'{k}={v}' for k, v in sorted(states.items()))};"
            f" cached={cached}; retried={len(retried)})"
        )
    for a in run["artifacts"]:
        data = str(a["data"]).strip().splitlines()
        first = data[0][:100] if data else ""
        lines.append(f"{indent}  artifact {a['key'] or '(no key)'} [{a['type']}]: {a['description'] or first}")
    for child in run["subflow_runs"]:
        lines += _render_run(child, indent + "  ")
    return lines


def render(report: dict[str, Any]) -> str:
    """Human-readable text of an `audit()` report."""
    lines: list[str] = []
    kind = report["kind"]
    if kind == "flow_run":
        lines += _render_run(report["flow_run"])
        if report["objects"]:
            lines.append("stored objects named by this run:")
            for obj in report["objects"]:
                lines += _render_lineage(obj)
    elif kind == "corpus_version":
        lines.append(f"corpus version {report['target']}")
        for c in report["corpora"]:
            lines.append(
                f"  speaker={c.get('speaker')} corpus={c['corpus_sha'][:12]} refs={', '.join(c['refs'])} "
                f"recorded {c.get('set_at')}"
            )
            run = c.get("built_by")
            if run and "error" not in run:
                lines.append(f"  built by flow run {run['id']} ({run['name']}): deployment={run['deployment']} "
                             f"state={run['state']} {run['start_time']} -> {run['end_time']}")
            else:
                why = f" (Prefect API: {run['error']})" if run else ""
                lines.append(f"  built by flow run {c.get('flow_run_id') or '(outside Prefect)'}{why}")
            for b in c.get("rebuilds") or []:
                lines.append(f"  rebuilt unchanged by flow run {b['flow_run_id']} at {b['set_at']} "
                             f"(tree {b['corpus_sha'][:12]}, ref {b['ref']})")
            lines += _render_lineage(c, "    ")
            for v in c["voices"]:
                lines.append(f"    voice {v['ref']} -> {v['sha'][:12]} (set {v['set_at']}): {_fmt_params(v['extra'])}")
            if not c["voices"]:
                lines.append("    no voice in the registry was trained from it yet")
    else:
        lines += _render_lineage(report)
    return "\n".join(lines)
