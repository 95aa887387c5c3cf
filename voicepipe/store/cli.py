"""`voicepipe store …`: look into the artifact store (check, refs, lineage, get, put). Mount with `register(app)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

store_app = typer.Typer(help="Inspect the artifact store (objects, refs, lineage).", no_args_is_help=True)

_CONFIG = typer.Option(None, "--config", help="YAML settings file.")
_STORE = typer.Option(None, "--store", help="Store URL (default: the settings' store_url).")
_WHAT = "sha256, unique sha256 prefix or ref name"


def _open(config: Path | None, store: str | None) -> Any:
    from voicepipe.config import load_settings
    from voicepipe.store.core import open_store

    return open_store(load_settings(config, store_url=store))


def _resolve(st: Any, what: str) -> str:
    """A sha256, a unique sha256 prefix (as logs and reports print them), or the name of a ref (its current sha)."""
    return st.resolve(what)


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
def lineage(what: str = typer.Argument(..., help=_WHAT), as_json: bool = typer.Option(False, "--json"),
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
def get(what: str = typer.Argument(..., help=_WHAT), dest: Path = typer.Argument(...),
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
    """Store a file or a directory by hand (recorded with step 'manual' unless given); prints its sha256.

    E.g. enrollment clips for a corpus build started from the Prefect UI: `voicepipe store put alice.wav --ref
    enroll/alice`, then give `store:enroll/alice` (or the printed sha, or its s3:// URI) as the form's enrollment."""
    st = _open(config, store)
    out = st.put_dir(path, step=step) if path.is_dir() else st.put_file(path, step=step)
    if ref:
        st.set_ref(ref, out)
    typer.echo(out.sha256)


@store_app.command("link")
def link(what: str = typer.Argument(..., help=_WHAT),
         path: str | None = typer.Argument(None, help="A file inside a stored directory tree"),
         config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Print a link a browser can open (relay URL, presigned S3 URL, or file:// for a local store)."""
    from voicepipe.config import load_settings
    from voicepipe.store.links import browser_link, tree_link

    settings = load_settings(config, store_url=store)
    st = _open(config, store)
    sha = st.resolve(what)
    typer.echo(tree_link(st, sha, path, settings) if path else browser_link(st, sha, settings=settings))


@store_app.command("serve")
def serve(host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
          port: int = typer.Option(8787), config: Path | None = _CONFIG, store: str | None = _STORE) -> None:
    """Run the store relay: browser links /files/<sha>/<name>, /trees/<sha>/<path>, and the MinIO event hook.

    Set VOICEPIPE_LINK_BASE_URL=http://<this host>:<port> on the workers so their UI links point here."""
    import uvicorn

    from voicepipe.store.relay import create_app

    uvicorn.run(create_app(store=_open(config, store)), host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Mount `store` on the main CLI."""
    app.add_typer(store_app, name="store")
