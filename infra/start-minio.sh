#!/usr/bin/env bash
# MinIO without Docker (binary from https://min.io/download, e.g. /usr/local/bin/minio).
# voicepipe's store creates its bucket on first use; with the `mc` client this also creates it up front.
set -euo pipefail
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER (see infra/env.example)}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD (see infra/env.example)}"
export MINIO_ROOT_USER MINIO_ROOT_PASSWORD
DATA=${MINIO_DATA_DIR:-/srv/minio}
mkdir -p "$DATA"
if command -v mc >/dev/null 2>&1; then
  ( for _ in $(seq 1 60); do
      if mc alias set voicepipe "http://127.0.0.1:${MINIO_ADDRESS##*:}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" \
           >/dev/null 2>&1; then
        mc mb --ignore-existing "voicepipe/${MINIO_BUCKET:-voicepipe}" && exit 0
      fi
      sleep 1
    done ) &
fi
exec minio server "$DATA" --address "${MINIO_ADDRESS:-:9000}" --console-address "${MINIO_CONSOLE_ADDRESS:-:9001}"
