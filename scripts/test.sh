#!/usr/bin/env bash
# Run the whole test suite: starts a private redis-server on a free loopback
# port, exports REDIS_URL for the integration tests, runs
# `swift build --build-tests` then `swift test` (extra arguments go to
# `swift test`, e.g. scripts/test.sh --filter MiniHTTPTests), and always
# stops that redis-server by its PID. Exit code: swift test's.
# SCRATCH_PATH (default .build) is SwiftPM's build directory.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$script_dir/.."

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$script_dir/ensure-packages.sh"

SCRATCH_PATH=${SCRATCH_PATH:-.build}

redis_pid=""
watchdog_pid=""
child_pid=""
tmp_dir=""

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (python3 if present, else a bash probe).
free_port() {
    local port i
    if command -v python3 >/dev/null 2>&1 && python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null; then
        return 0
    fi
    for ((i = 0; i < 200; i++)); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# stop_pid NAME PID — SIGTERM, wait up to 10 s, then SIGKILL.
# shellcheck disable=SC2317  # only called from the EXIT trap
stop_pid() {
    local name=$1 pid=$2 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        printf 'warning: %s (pid %s) did not stop on SIGTERM; sending SIGKILL\n' "$name" "$pid" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    if [[ -n "$child_pid" ]]; then
        # swift build/test stop cleanly on SIGINT (SIGTERM orphans the test runner).
        kill -INT "$child_pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$child_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$child_pid" 2>/dev/null || true
        wait "$child_pid" 2>/dev/null || true
        child_pid=""
    fi
    if [[ -n "$watchdog_pid" ]]; then
        kill -TERM "$watchdog_pid" 2>/dev/null || true
        wait "$watchdog_pid" 2>/dev/null || true
        watchdog_pid=""
    fi
    if [[ -n "$redis_pid" ]]; then
        stop_pid redis-server "$redis_pid"
        redis_pid=""
    fi
    if [[ -n "$tmp_dir" ]]; then
        rm -rf "$tmp_dir"
        tmp_dir=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run CMD... — run a long command as a background child and wait for it, so
# that INT/TERM reach the traps at once instead of after the command ends.
# Returns the command's exit code.
run() {
    local status=0
    "$@" </dev/null &
    child_pid=$!
    echo "$child_pid" >"$tmp_dir/child.pid"
    wait "$child_pid" || status=$?
    rm -f "$tmp_dir/child.pid"
    child_pid=""
    return "$status"
}

log "checking packages and Swift"
ensure_packages libhiredis-dev redis-server redis-tools curl
ensure_packages redis-sentinel ||
    log "warning: redis-sentinel could not be installed; the Sentinel failover test will be skipped"
# flask, flask-session and redis (Python) for the Flask-Session baseline of the
# Sentinel failover test; a pip failure only skips that test.
if ! command -v python3 >/dev/null 2>&1; then
    log "warning: no python3; the Flask-Session baseline test will be skipped"
elif ! python3 -c 'import flask, flask_session, redis' >/dev/null 2>&1; then
    log "installing flask, flask-session and redis with pip"
    pip_out=$(PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        flask flask-session redis 2>&1) || {
        printf '%s\n' "$pip_out" | tail -n 5 >&2
        log "warning: pip could not install flask, flask-session and redis; the Flask-Session baseline test will be skipped"
    }
fi
ensure_swift

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-test.XXXXXX")

# Start redis-server; retry on another port if the chosen one got taken.
started=""
for attempt in 1 2 3 4 5; do
    port=$(free_port) || die "no free loopback port found for redis-server"
    log "starting redis-server on 127.0.0.1:$port (attempt $attempt)"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$tmp_dir" --logfile "$tmp_dir/redis.log" \
        </dev/null >"$tmp_dir/redis.out" 2>&1 &
    redis_pid=$!
    for ((i = 0; i < 100; i++)); do     # up to 10 s
        if [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)" == PONG ]]; then
            started=1
            break
        fi
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n "$started" ]] && break
    if kill -0 "$redis_pid" 2>/dev/null; then
        tail -n 20 "$tmp_dir/redis.log" "$tmp_dir/redis.out" >&2 || true
        die "redis-server (pid $redis_pid) did not answer PING on port $port within 10 s"
    fi
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
    tail -n 5 "$tmp_dir/redis.log" "$tmp_dir/redis.out" >&2 || true
done
[[ -n "$started" ]] || die "redis-server could not be started (see its log above)"

# Should this script be killed with SIGKILL (no trap runs), still stop
# swift build/test, stop redis and remove the temp dir.
(
    trap - INT TERM
    while kill -0 "$$" 2>/dev/null; do sleep 1; done
    if [[ -s "$tmp_dir/child.pid" ]]; then
        kill -INT "$(<"$tmp_dir/child.pid")" 2>/dev/null
    fi
    kill -TERM "$redis_pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    rm -rf "$tmp_dir"
) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

export REDIS_URL="redis://127.0.0.1:$port/0"
log "redis-server ready (pid $redis_pid), REDIS_URL=$REDIS_URL"

log "swift build --build-tests (scratch path $SCRATCH_PATH)"
status=0
run swift build --build-tests --scratch-path "$SCRATCH_PATH" || status=$?
if ((status != 0)); then
    log "build failed (exit code $status)"
    exit "$status"
fi

log "swift test${*:+ $*}"
run swift test --scratch-path "$SCRATCH_PATH" "$@" || status=$?
if ((status == 0)); then
    log "tests passed"
else
    log "tests failed (exit code $status)"
fi
exit "$status"
