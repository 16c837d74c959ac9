#!/usr/bin/env bash
# Install tesp-api with a local Pulsar and run everything on this machine: README's Quick start.
# API on http://127.0.0.1:8080 (Swagger UI at /), embedded task store, a Pulsar child process on a private
# Unix socket with a random token, and the container runtime picked automatically (docker, podman,
# apptainer; else bubblewrap with a warning). Runs in the foreground: Ctrl-C stops it, Pulsar included.
# The command it installs is $VENV/bin/tesp-api (`. .venv/bin/activate` puts it on PATH).
# Extra arguments go to `tesp-api local` (see `.venv/bin/tesp-api local --help`).
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
# Install only when this checkout's pyproject.toml changed since the last install into this venv: a second
# run starts at once (the install is editable, so code changes need no reinstall).
stamp="$VENV/.tesp-api-run-stamp"
want="$(pwd) $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/tesp-api" ] || [ ! -x "$VENV/bin/pulsar-serve" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[pulsar]'
  echo "$want" >"$stamp"
fi
exec "$VENV/bin/tesp-api" local "$@"
