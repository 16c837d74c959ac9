#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine and run it. README's test command;
# .ci/run calls exactly this. Extra arguments go to pytest (e.g. `scripts/test.sh tests/api -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# Executors run for real under bubblewrap, Docker and Podman (tests/runtimes/ is parametrized over all
# three); busybox-static is the local/busybox:1 test image (no registry is reachable), uidmap is what
# podman needs for user namespaces. Debian packages, installed as root when missing; a machine where
# they cannot be installed skips those tests with the reason. chromium: the browser tests (tests/browser,
# Playwright drives Debian's build; `playwright install` cannot download one here); curl: the README's
# Use it block (tests/test_readme.py); slurmctld, slurmd, slurm-client, munge (+ slurmdbd, mariadb-server
# for sacct): a one-node Slurm cluster behind Pulsar (tests/e2e/test_slurm.py, started with a private
# MariaDB by tests/services/slurm.py; no service is started here).
missing=()
for pkg in bubblewrap docker.io docker-compose podman busybox-static uidmap chromium curl slurmctld slurmd slurm-client munge slurmdbd mariadb-server; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # Start no service: the suite runs its own private dockerd (tests/services/docker_daemon.py); a
    # system dockerd on /var/run/docker.sock would change what runtime.type=auto picks machine-wide.
    norc=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && norc=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || \
      echo "warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
    [ -z "$norc" ] || rm -f /usr/sbin/policy-rc.d
  else
    echo "warning: ${missing[*]} not installed (needs root + apt-get); the tests that need them will be skipped" >&2
  fi
fi

# RabbitMQ for the AMQP tests: the build machines run it on 127.0.0.1:5672; start it if it is down.
# (`rabbitmqctl status` itself crashes on these VMs: disk free is NaN; ping only asks the node.)
if command -v rabbitmq-diagnostics >/dev/null 2>&1 && ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  (rabbitmq-server -detached >/dev/null 2>&1 && rabbitmqctl -q await_startup --timeout 60) || \
    echo "warning: RabbitMQ could not be started; AMQP tests will be skipped" >&2
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'

# The MongoDB wire-protocol test server (mongoeco) needs Python >= 3.13: a sidecar venv.
if [ ! -x .venv-mongoeco/bin/python ]; then
  # The first candidate that really runs (a pyenv shim named python3.13 exists without that version selected).
  PY313=
  for candidate in python3.13 "$HOME"/.pyenv/versions/3.1[3-9]*/bin/python; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; then
      PY313=$candidate
      break
    fi
  done
  if [ -n "$PY313" ]; then
    "$PY313" -m venv .venv-mongoeco && .venv-mongoeco/bin/python -m pip install -q --disable-pip-version-check mongoeco \
      || echo "warning: mongoeco could not be installed; MongoDB adapter tests will be skipped" >&2
  else
    echo "warning: no Python >= 3.13 for mongoeco; MongoDB adapter tests will be skipped" >&2
  fi
fi

# Quality gates (CI runs them on every change): ruff's lint rule set and format check, mypy --strict with
# the pydantic plugin over tesp_api/, and the architecture contracts (import-linter: layers, no FastAPI in
# the core, independent adapters, no import cycles; docs/architecture.md), all configured in pyproject.toml.
# TESP_SKIP_GATES=1 skips them locally.
if [ "${TESP_SKIP_GATES:-0}" != 1 ]; then
  "$VENV/bin/ruff" check tesp_api tests benchmarks scripts
  "$VENV/bin/ruff" format --check tesp_api tests benchmarks scripts
  "$VENV/bin/python" -m mypy
  "$VENV/bin/lint-imports" --no-cache  # no cache directory left in the checkout
fi

exec "$VENV/bin/python" -m pytest "$@"
