#!/usr/bin/env bash
# MinIO without Docker (binary from https://min.io/download, e.g. /usr/local/bin/minio). Binds 127.0.0.1 unless
# MINIO_ADDRESS / MINIO_CONSOLE_ADDRESS say otherwise (:9000 to serve other machines).
# voicepipe's store creates its bucket on first use; with the `mc` client this also creates it up front.
set -euo pipefail
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (see infra/env.example)}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (see infra/env.example)}"
export MINIO_ROOT_USER MINIO_ROOT_PASSWORD
DATA=${MINIO_DATA_DIR:-/srv/minio}
ADDR=${MINIO_ADDRESS:-127.0.0.1:9000}
PORT=${ADDR##*:}
mkdir -p "$DATA"
if command -v mc >/dev/null 2>&1; then
  ( for _ in $(seq 1 60); do
      if mc alias set voicepipe "http://127.0.0.1:$PORT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" \
           >/dev/null 2>&1; then
        mc mb --ignore-existing "voicepipe/${MINIO_BUCKET:-voicepipe}" && exit 0
      fi
      sleep 1
    done ) &
fi
exec minio server "$DATA" --address "$ADDR" \
  --console-address "${MINIO_CONSOLE_ADDRESS:-127.0.0.1:9001}"
