#!/bin/sh
# Pulsar container entrypoint: check what would otherwise make every task fail later, with a message
# that says what to do, then exec the command (pulsar-serve or pulsar-main).
#
# Checks (each one can be switched off for tests or special set-ups, see docs/deploy.md):
#  1. the staging (job) directory is an absolute, writable path;
#  2. REST mode has a private_token (this container drives the host's Docker: an open Pulsar is root on the host);
#  3. the host's Docker daemon answers through the mounted socket (PULSAR_CHECK_DOCKER=0 skips);
#  4. best effort: the staging directory is mounted at the same path as on the host (a warning only).
set -eu

fail() {
    code=$1
    shift
    echo "pulsar-entrypoint: $*" >&2
    exit "$code"
}

staging=${PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY:-}
[ -n "$staging" ] || fail 64 "PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY is not set (the job directory, same path on host and container)"
case $staging in
    /*) ;;
    *) fail 64 "PULSAR_CONFIG_OVERRIDE_STAGING_DIRECTORY must be an absolute path, got '$staging'" ;;
esac
if [ ! -d "$staging" ] || [ ! -w "$staging" ]; then
    fail 73 "staging directory $staging is missing or not writable by uid $(id -u); on the host run:" \
        "sudo install -d -o $(id -u) -g $(id -g) '$staging'"
fi

if [ -z "${PULSAR_CONFIG_OVERRIDE_MESSAGE_QUEUE_URL:-}" ] && [ -z "${PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN:-}" ] \
    && [ "${PULSAR_ALLOW_NO_TOKEN:-0}" != 1 ]; then
    fail 64 "PULSAR_CONFIG_OVERRIDE_PRIVATE_TOKEN is empty: set PULSAR_PRIVATE_TOKEN in .env" \
        "(this Pulsar runs containers on the host's Docker; it must not accept requests from anyone)"
fi

if [ "${PULSAR_CHECK_DOCKER:-1}" = 1 ]; then
    if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        sock=/var/run/docker.sock
        fail 69 "cannot reach the Docker daemon through $sock as uid $(id -u) (groups: $(id -G))." \
            "Mount the host's socket and set DOCKER_GID in .env to: stat -c %g $sock (run on the host)"
    fi
    # Best effort: compose gives the container its id as host name; look for a same-path mount.
    mounts=$(docker inspect --format '{{range .Mounts}}{{if eq .Source .Destination}}{{.Destination}}{{"\n"}}{{end}}{{end}}' \
        "$(hostname)" 2>/dev/null || true)
    if [ -n "$mounts" ] && ! printf '%s\n' "$mounts" | grep -qx "$staging"; then
        echo "pulsar-entrypoint: WARNING: $staging is not bind-mounted from the same host path;" \
            "task containers will not see their job files (docs/deploy.md, 'same path')" >&2
    fi
fi

exec "$@"
