#!/usr/bin/env bash
# Build .dev-gpu/: what the device machine (Python 3.12, torch + transformers already there) lacks to run the
# benchmarks, as cp312 wheels at requirements.lock's versions, plus a tiny custom-voice dir for tokenizer/config.
# Then, from the `device` tool: carry [".dev-gpu"] and begin the command with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev-gpu/.whl/*.whl;
#   export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1;
# e.g. python3 benchmarks/speaker.py --backends wavlm,wespeaker --out $OUT
#      python3 benchmarks/evaluate.py --checkpoint --tiny-dir .dev-gpu/tiny-alice --out $OUT
#      python3 benchmarks/ha_wyoming.py --tiny-dir .dev-gpu/tiny-alice --device cuda --max-frames 125 --out $OUT
# The list was found by importing those benchmarks with only the image's packages + these visible (2026-12-03).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=.dev-gpu
mkdir -p "$OUTDIR/.whl"
grep -qx '/.dev-gpu/' .git/info/exclude 2>/dev/null || echo '/.dev-gpu/' >> .git/info/exclude
NEED="annotated-types asteroid-filterbanks audioread cffi colorlog decorator fastapi julius librosa mako greenlet
alembic optuna sqlalchemy opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
opentelemetry-exporter-otlp opentelemetry-exporter-otlp-common opentelemetry-exporter-otlp-proto-common
opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-grpc opentelemetry-proto
opentelemetry-exporter-http-transport googleapis-common-protos orjson platformdirs pooch primepy pyannote-audio
pyannote-core pyannote-database pyannote-metrics pyannote-pipeline pycparser pydantic pydantic-core
pydantic-settings python-dotenv pytz sentence-stream sniffio soundfile soxr starlette torch-audiomentations
torch-pitch-shift typing-inspection uvicorn wyoming wyoming-bench faster-qwen3-tts typing-extensions
importlib-metadata lameenc httptools uvloop"
reqs=$(mktemp)
for name in $NEED; do
  pin=$(grep -i "^${name}==" requirements.lock | head -1 || true)
  echo "${pin:-$name}" >> "$reqs"
done
q=$(.venv/bin/python -m pip show qwen-tts-hf 2>/dev/null | sed -n 's/^Version: //p')
echo "qwen-tts-hf${q:+==$q}" >> "$reqs"
echo "webrtcvad-wheels" >> "$reqs"  # resemblyzer's VAD, prebuilt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$OUTDIR/.whl" -r "$reqs"
[ -d "$OUTDIR/tiny-alice" ] || PYTHONPATH=$PWD .venv/bin/python -c \
  "from voicepipe.models.tiny import build_tiny_custom_voice as b; b('$OUTDIR/tiny-alice')"
du -sh "$OUTDIR"
