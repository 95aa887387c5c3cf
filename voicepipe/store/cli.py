"""`voicepipe store …`: look into the artifact store (check, refs, lineage, get, put). Mount with `register(app)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from voicepipe.errors import StoreError

store_app = typer.Typer(help="Inspect the artifact store (objects, refs, lineage).", no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", help="YAML settings file.")
_STORE = typer.Option(None, "--store", help="Store URL (default: the settings' store_url).")


def _open(config: Path | None, store: str | None) -> Any:
    from voicepipe.config import load_settings
    from voicepipe.store.core import open_store

    return open_store(load_settings(config, store_url=store))


def _resolve(st: Any, what: str) -> str:
    """A sha256, or the name of a ref (its current sha)."""
    if len(what) == 64 and all(c in "0123456789abcdef" for c in what.lower()):
        return what.lower()
    ref = st.get_ref(what)
    if ref is None:
        raise StoreError(f"{what}: neither a sha256 nor a ref in store {st.url}")
    return ref["sha"]


@store_app.command("check")
def check(config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Open the store (creating a missing bucket) and report it: fails with one line if unreachable or refused."""
    st = _open(config, store)
    typer.echo(f"ok {st.url} ({len(st.list_refs())} refs)")


@store_app.command("refs")
def refs(prefix: str = typer.Argument("", help="Ref name prefix, e.g. voices/"), history: bool = False,
         config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """List refs (name, sha, when set, extra); with --history every value each ref has had."""
    st = _open(config, store)
    for ref in st.list_refs(prefix):
        values = st.ref_history(ref["name"]) if history else [ref]
        for v in values:
            typer.echo(f"{v['name']}\t{v['sha'][:12]}\t{v['set_at']}\t{json.dumps(v.get('extra') or {})}")


@store_app.command("lineage")
def lineage(what: str = typer.Argument(..., help="sha256 or ref name"), as_json: bool = typer.Option(False, "--json"),
            config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Everything an artifact was made from, back to its sources (step, name, params, code version)."""
    st = _open(config, store)
    chain = st.lineage(_resolve(st, what))
    if as_json:
        typer.echo(json.dumps(chain, indent=2))
        return
    for m in chain:
        pad = "  " * m["depth"]
        if m.get("missing"):
            typer.echo(f"{pad}{m['sha256'][:12]}  (no sidecar in the store)")
            continue
        commit = (m.get("code_version") or {}).get("git_commit") or "?"
        typer.echo(f"{pad}{m['sha256'][:12]}  {m['step']}  {m.get('name') or ''}  {m['created']}  "
                   f"code {commit[:10]}  params {json.dumps(m.get('params') or {})}")


@store_app.command("get")
def get(what: str = typer.Argument(..., help="sha256 or ref name"), dest: Path = typer.Argument(...),
        config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Fetch an object (a file, or a whole directory for a tree) to DEST, verified against its hash."""
    st = _open(config, store)
    sha = _resolve(st, what)
    out = st.get_dir(sha, dest) if st.meta(sha).get("kind") == "tree" else st.get_file(sha, dest)
    typer.echo(str(out))


@store_app.command("put")
def put(path: Path = typer.Argument(..., help="A file or a directory"), step: str = typer.Option("manual"),
        ref: str | None = typer.Option(None, help="Also point this ref at it"),
        config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Store a file or a directory by hand (recorded with step 'manual' unless given); prints its sha256."""
    st = _open(config, store)
    out = st.put_dir(path, step=step) if path.is_dir() else st.put_file(path, step=step)
    if ref:
        st.set_ref(ref, out)
    typer.echo(out.sha256)


def register(app: typer.Typer) -> None:
    """Mount `store` on the main CLI."""
    app.add_typer(store_app, name="store")
