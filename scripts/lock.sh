#!/usr/bin/env bash
# Regenerate requirements.lock: every package voicepipe installs (runtime + dev extras), pinned, for CPython 3.11
# on Linux x86_64 (the CPU set-up, CI and the worker images). scripts/bootstrap.sh and infra/Dockerfile install
# with `-c requirements.lock`, so a fresh machine gets exactly what CI ran. Run it on purpose, after changing
# pyproject.toml's dependencies:   scripts/lock.sh            (keeps every existing pin that still fits)
#                                  scripts/lock.sh --upgrade  (re-resolves everything to the newest allowed)
# - pip's own resolver (`pip install --dry-run --report`), so the lock is what `pip install` would do here;
# - torch stays at $TORCH_VERSION (2.13.0: the CPU wheel here, the CUDA wheel of the same version in the GPU
#   image); local labels (+cpu) are dropped so one lock serves both;
# - deterministic: the existing lock is passed as constraints, so re-running without a pyproject change gives the
#   same file; a new dependency is resolved against the old pins (falls back to a fresh resolve if they conflict);
#   lines are sorted by normalized name; the header records the sha of pyproject.toml the lock was made from.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
LOCK=requirements.lock
upgrade=0
[ "${1:-}" = "--upgrade" ] && upgrade=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==$TORCH_VERSION" > "$tmp/torch.txt"
# the old lock minus torch (the pin above wins) and minus comments
if [ "$upgrade" = 0 ] && [ -f "$LOCK" ]; then grep -v -E '^(#|torch==)' "$LOCK" > "$tmp/old.txt" || true; else : > "$tmp/old.txt"; fi

resolve() {  # resolve [extra pip args...] -> $tmp/report.json
  "$PY" -m pip install --disable-pip-version-check --dry-run --ignore-installed -q --report "$tmp/report.json" \
    -c "$tmp/torch.txt" "$@" ".[dev]" 2> >(grep -v -E "is ignored|^WARNING: Location" >&2)
}
if ! resolve -c "$tmp/old.txt"; then
  echo "[lock] the old pins conflict with pyproject.toml: resolving from scratch" >&2
  resolve
fi

"$PY" - "$tmp/report.json" "$LOCK" "$TORCH_VERSION" <<'EOF'
import hashlib
import json
import re
import sys
from pathlib import Path

report, lock, torch_version = json.load(open(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
pins = {}
for item in report["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
    if name == "voicepipe":
        continue
    pins[name] = meta["version"].split("+")[0]  # 2.13.0+cpu -> 2.13.0: the GPU image's CUDA wheel fits too
bad = sorted(n for n in pins if n.startswith("nvidia-") or n == "triton")
if bad:
    sys.exit(f"[lock] a CUDA build crept in ({', '.join(bad)}): torch must stay the CPU wheel {torch_version}")
if pins.get("torch") != torch_version:
    sys.exit(f"[lock] torch resolved to {pins.get('torch')}, not {torch_version}")
env = report.get("environment", {})
digest = hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest()[:16]
lines = [
    "# voicepipe's pinned dependencies (runtime + dev): made by scripts/lock.sh, do not edit by hand.",
    f"# python {env.get('python_full_version', '?')} {env.get('sys_platform', '?')} {env.get('platform_machine', '?')}"
    f"; pyproject.toml sha256 {digest}",
    "# installed as constraints: pip install -c requirements.lock -e '.[dev]' (scripts/bootstrap.sh, infra/Dockerfile)",
    *(f"{n}=={v}" for n, v in sorted(pins.items())),
]
lock.write_text("\n".join(lines) + "\n")
print(f"[lock] {lock}: {len(pins)} packages (pyproject {digest})")
EOF
