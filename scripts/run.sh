#!/usr/bin/env bash
# Install tesp-api with a local Pulsar and run everything on this machine: README's run command.
# API on http://127.0.0.1:8080 (Swagger UI at /), embedded task store, a Pulsar child process, and the
# container runtime picked automatically (docker, podman, apptainer; else bubblewrap with a warning).
# Extra arguments go to `tesp-api local` (see `tesp-api local --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if ! command -v docker >/dev/null 2>&1 && ! command -v podman >/dev/null 2>&1 \
   && ! command -v apptainer >/dev/null 2>&1 && ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "warning: no container runtime and no bubblewrap found: install one (e.g. apt-get install bubblewrap)" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[pulsar]'
exec "$VENV/bin/tesp-api" local "$@"
