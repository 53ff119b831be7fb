#!/usr/bin/env bash
# Run the whole test suite: starts a private redis-server on a free loopback
# port, a private Redis Cluster (3 primaries, 3 replicas), a private
# PostgreSQL (scripts/postgres.sh) and a private 3-server ZooKeeper ensemble
# (scripts/zookeeper.sh), exports REDIS_URL, REDIS_CLUSTER_SEEDS
# (127.0.0.1:port,... of every cluster node), POSTGRES_URL and
# ZOOKEEPER_CONNECT for the integration tests, runs
# `swift build --build-tests` then `swift test` (extra arguments go to
# `swift test`, e.g. scripts/test.sh --filter MiniHTTPTests), then, for the
# whole suite (no arguments; SKIP_INTEGRATIONS=1 skips it), the framework
# adapters' packages (Integrations/test.sh), and always stops those
# servers by their PIDs. Exit code: the first failure's.
#
# The core package's suites apart (the first argument; more arguments still go
# to `swift test`):
#   scripts/test.sh --unit         only the unit suites: no Redis is started
#   scripts/test.sh --integration  only the suites tagged .integration (Redis,
#                                  child processes, clusters; test-selection.sh)
# Neither runs the adapters' packages.
# SCRATCH_PATH (default .build) is SwiftPM's build directory.
#
# Skipped tests (a test that cannot run here says why, and is reported as
# skipped, never as passed) are counted and listed after each `swift test`;
# REQUIRE_ALL=1 (CI sets it) makes any skip fail the run (skipped-tests.sh).
set -euo pipefail

selection=all
case "${1:-}" in
--unit | --integration)
    selection=${1#--}
    shift
    ;;
esac

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"
# shellcheck source-path=SCRIPTDIR source=test-selection.sh
source "$script_dir/test-selection.sh"
# shellcheck source-path=SCRIPTDIR source=skipped-tests.sh
source "$script_dir/skipped-tests.sh"

# The suites to run: all, or `swift test` arguments that select unit or integration suites.
selected=()
if [[ $selection != all ]]; then
    integration=$(integration_regex Tests) || exit 1
    if [[ $selection == unit ]]; then selected=(--skip "$integration"); else selected=(--filter "$integration"); fi
fi

# shellcheck disable=SC2317  # called by cleanup (lib.sh), from the EXIT trap
stop_children() {
    if [[ -n "$child_pid" ]]; then
        # swift build/test stop cleanly on SIGINT (SIGTERM orphans the test runner). Integrations/test.sh
        # runs as a background bash, which ignores SIGINT: it gets SIGTERM, and stops its own swift
        # build/test with SIGINT.
        kill -"$child_signal" "$child_pid" 2>/dev/null || true
        wait_gone "$child_pid" || true
        kill -KILL "$child_pid" 2>/dev/null || true
        wait "$child_pid" 2>/dev/null || true
        child_pid=""
    fi
}
child_signal=INT
install_traps

log "checking packages and Swift"
if [[ $selection == unit ]]; then
    ensure_packages "${build_packages[@]}"  # unit suites need nothing else
else
    ensure_packages "${build_packages[@]}" redis-server redis-tools curl
    ensure_postgres_packages
    ensure_zookeeper_packages
    ensure_packages redis-sentinel ||
        log "warning: redis-sentinel could not be installed; the Sentinel failover test will be skipped"
fi
# flask, flask-session and redis (Python) for the Flask-Session baseline of the
# Sentinel failover test; a pip failure only skips that test.
if [[ $selection == unit ]]; then
    :  # the unit suites need no Python
elif ! command -v python3 >/dev/null 2>&1; then
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

if [[ $selection == unit ]]; then
    unset REDIS_URL REDIS_CLUSTER_SEEDS POSTGRES_URL ZOOKEEPER_CONNECT
else
    start_redis
    start_redis_cluster
    start_postgres
    start_zookeeper_ensemble
fi

# Should this script be killed with SIGKILL (no trap runs), still stop
# swift build/test, stop redis and the cluster, and remove the temp dir.
start_watchdog INT

if [[ $selection != unit ]]; then
    export REDIS_URL="redis://127.0.0.1:$redis_port/0"
    log "redis-server ready (pid $redis_pid), REDIS_URL=$REDIS_URL"
    export REDIS_CLUSTER_SEEDS="$redis_cluster_seeds"
    log "Redis Cluster ready (pids ${redis_cluster_pids[*]}), REDIS_CLUSTER_SEEDS=$REDIS_CLUSTER_SEEDS"
    export POSTGRES_URL="$postgres_url"
    log "PostgreSQL ready (pid $postgres_pid), POSTGRES_URL=$POSTGRES_URL"
    export ZOOKEEPER_CONNECT="$zookeeper_connect"
    log "ZooKeeper ensemble ready (pids ${zookeeper_pids[*]}), ZOOKEEPER_CONNECT=$ZOOKEEPER_CONNECT"
fi

# The import check makes a test target that imports a module it does not declare
# fail every build, not only the builds where that module happened to come first.
build_flags=(--scratch-path "$SCRATCH_PATH" --explicit-target-dependency-import-check error)
log "swift build --build-tests (scratch path $SCRATCH_PATH)"
status=0
run swift build --build-tests "${build_flags[@]}" || status=$?
if ((status != 0)); then
    log "build failed (exit code $status)"
    exit "$status"
fi

log "swift test ($selection suites)${*:+ $*}"
started=$SECONDS
run --tee "$tmp_dir/swift-test.log" swift test "${build_flags[@]}" "${selected[@]}" "$@" || status=$?
if ((status != 0)); then
    log "tests failed (exit code $status)"
    report_skipped "$tmp_dir/swift-test.log" "core package" || true
    exit "$status"
fi
log "tests passed ($selection suites, $((SECONDS - started)) s)"
report_skipped "$tmp_dir/swift-test.log" "core package" || status=$?

# The framework adapters (their own packages, so the core never compiles a
# web framework): part of the whole suite, not of a filtered run.
if (($# == 0)) && [[ $selection == all && "${SKIP_INTEGRATIONS:-0}" != 1 ]]; then
    log "framework adapters: Integrations/test.sh (Hummingbird, Vapor; the first build takes minutes)"
    child_signal=TERM
    echo TERM >"$tmp_dir/child.signal"   # for the watchdog
    adapters=0
    run bash Integrations/test.sh || adapters=$?
    if ((adapters == 0)); then
        log "adapter tests passed"
    else
        log "adapter tests failed (exit code $adapters)"
        ((status != 0)) || status=$adapters
    fi
fi
exit "$status"
