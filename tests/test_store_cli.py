"""`voicepipe store …` commands on a real local store (mounted on a Typer app as the main CLI does)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from voicepipe.errors import ConfigError, StoreError
from voicepipe.store import open_store
from voicepipe.store.cli import register


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, like the real CLI
        pass

    register(app)
    return app


def test_store_commands(tmp_path):
    url = f"file://{tmp_path / 'store'}"
    run = CliRunner().invoke
    app = _app()
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.bin").write_bytes(b"weights")

    r = run(app, ["store", "put", str(src), "--step", "train.save", "--ref", "voices/alice", "--store", url])
    assert r.exit_code == 0, r.output
    tree = r.output.strip()
    st = open_store(url)
    assert st.meta(tree)["kind"] == "tree" and st.get_ref("voices/alice")["sha"] == tree

    derived = st.put_json({"score": 1}, step="evaluate", inputs=[tree], params={"n": 3})
    r = run(app, ["store", "lineage", derived.sha256, "--store", url])
    assert r.exit_code == 0 and r.output.splitlines()[0].startswith(derived.sha256[:12] + "  evaluate")
    assert r.output.splitlines()[1].startswith("  " + tree[:12] + "  train.save  ckpt")

    r = run(app, ["store", "refs", "voices/", "--store", url])
    assert r.exit_code == 0 and r.output.startswith(f"voices/alice\t{tree[:12]}\t")
    r = run(app, ["store", "get", "voices/alice", str(tmp_path / "out"), "--store", url])
    assert r.exit_code == 0 and (tmp_path / "out" / "model.bin").read_bytes() == b"weights"
    r = run(app, ["store", "check", "--store", url])
    assert r.exit_code == 0 and r.output.strip() == f"ok {st.url} (1 refs)"

    r = run(app, ["store", "get", "voices/bob", str(tmp_path / "x"), "--store", url])
    assert isinstance(r.exception, StoreError) and "voices/bob" in str(r.exception)
    r = run(app, ["store", "check", "--store", "ftp://somewhere/x"])
    assert isinstance(r.exception, ConfigError) and "ftp://somewhere/x" in str(r.exception)


def test_store_commands_take_sha_prefixes_and_print_links(tmp_path, monkeypatch):
    url = f"file://{tmp_path / 'store'}"
    run = CliRunner().invoke
    app = _app()
    src = tmp_path / "rep"
    src.mkdir()
    (src / "report.html").write_text("<p>hi</p>")
    tree = run(app, ["store", "put", str(src), "--store", url]).output.strip()
    r = run(app, ["store", "get", tree[:16], str(tmp_path / "out"), "--store", url])  # the 16 digits logs print
    assert r.exit_code == 0 and (tmp_path / "out" / "report.html").read_text() == "<p>hi</p>"
    r = run(app, ["store", "lineage", tree[:10], "--store", url])
    assert r.exit_code == 0 and r.output.startswith(tree[:12])
    monkeypatch.setenv("VOICEPIPE_LINK_BASE_URL", "http://127.0.0.1:8787")
    r = run(app, ["store", "link", tree[:8], "report.html", "--store", url])
    assert r.exit_code == 0 and r.output.strip() == f"http://127.0.0.1:8787/trees/{tree}/report.html"
