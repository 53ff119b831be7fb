#!/usr/bin/env bash
# Builds and tests the framework adapter packages: Shared (the async layer
# they share), SessionClusterHummingbird and SessionClusterVapor, each in its
# own directory with its own .build (so the core package never compiles a
# web framework). Fails on any compiler warning in this repository's code.
#
# Redis: the tests use $REDIS_URL when set (scripts/test.sh exports it);
# otherwise each Redis test starts a private redis-server on a free loopback
# port and stops it by its PID, so redis-server must be installed
# (apt-get install redis-server). The Redis Cluster cases run when
# $REDIS_CLUSTER_SEEDS names one (scripts/test.sh starts one and exports it). Extra arguments go to every `swift test`
# (e.g. Integrations/test.sh --filter Slow). Skipped tests are counted after
# each package's run; REQUIRE_ALL=1 fails the run when any were
# (scripts/skipped-tests.sh). Exit code: the first failure's.
set -euo pipefail

here=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
packages=(Shared SessionClusterHummingbird SessionClusterVapor)

log() { printf '==> %s\n' "$*"; }

child_pid=""
# A background command ignores SIGINT, and swift build/test then ignore it
# too; GNU env (coreutils 8.31+) starts them with SIGINT's default disposition.
sigint_default=()
if env --default-signal=INT true 2>/dev/null; then sigint_default=(env --default-signal=INT); fi
# SIGINT/SIGTERM (scripts/test.sh, which runs this script in the background
# where SIGINT is ignored, sends SIGTERM): stop the running swift build/test
# with SIGINT, which it handles cleanly, then exit.
on_signal() {
    if [[ -n "$child_pid" ]]; then
        kill -INT "$child_pid" 2>/dev/null || true
        wait "$child_pid" 2>/dev/null || true
    fi
    exit 130
}
trap on_signal INT TERM

# run LOG CMD... — runs CMD in the background (so a signal reaches this
# script at once), its output to the terminal and to LOG (through a FIFO, so
# that tee can be waited for: LOG is whole when run returns).
run() {
    local log_file=$1 status=0 tee_pid
    shift
    rm -f "$logs/run.fifo"
    mkfifo "$logs/run.fifo"
    tee "$log_file" <"$logs/run.fifo" &
    tee_pid=$!
    "${sigint_default[@]}" "$@" </dev/null >"$logs/run.fifo" 2>&1 &
    child_pid=$!
    wait "$child_pid" || status=$?
    child_pid=""
    wait "$tee_pid" || true
    rm -f "$logs/run.fifo"
    return "$status"
}

# The core package the adapters build on links system libraries (hiredis, libsodium).
# shellcheck source=../scripts/ensure-packages.sh
source "$here/../scripts/ensure-packages.sh"
# shellcheck source=../scripts/skipped-tests.sh
source "$here/../scripts/skipped-tests.sh"
skipped_failure=0
ensure_packages "${build_packages[@]}"

if [[ -z "${REDIS_URL:-}" ]] && ! command -v redis-server >/dev/null 2>&1 && [[ ! -x /usr/bin/redis-server ]]; then
    echo "error: REDIS_URL is not set and redis-server is not installed (apt-get install redis-server)" >&2
    exit 1
fi
log "Redis for the integration tests: ${REDIS_URL:-a private redis-server per test}"
log "Redis Cluster for the integration tests: ${REDIS_CLUSTER_SEEDS:-none (its cases are skipped; scripts/test.sh starts one)}"

logs=$(mktemp -d "${TMPDIR:-/tmp}/integrations-test.XXXXXX")
trap 'rm -rf "$logs"' EXIT

for package in "${packages[@]}"; do
    cd "$here/$package"
    log "$package: swift build, then swift build --build-tests"
    start=$SECONDS
    # Both: --build-tests alone does not link the example executables. Each runs as run's own
    # child (no `bash -c` between): a background bash ignores SIGINT, swift does not.
    for build in build build-tests; do
        # The import check: an undeclared import fails every build, not only unlucky orders.
        args=(--explicit-target-dependency-import-check error)
        [[ $build == build-tests ]] && args+=(--build-tests)
        run "$logs/$package-$build.log" swift build "${args[@]}" || {
            log "$package: build failed"
            exit 1
        }
    done
    log "$package: built in $((SECONDS - start)) s"
    # Warnings in this repository's code (dependencies' own are theirs).
    if cat "$logs/$package-build.log" "$logs/$package-build-tests.log" | grep -E '^/[^ ]+\.swift:[0-9]+:[0-9]+: warning:' | grep -v '/\.build/' >"$logs/warnings"; then
        log "$package: compiler warnings:"
        sort -u "$logs/warnings"
        exit 1
    fi
    log "$package: swift test${*:+ $*}"
    run "$logs/$package-test.log" swift test --explicit-target-dependency-import-check error "$@" || {
        log "$package: tests failed"
        exit 1
    }
    report_skipped "$logs/$package-test.log" "$package" || skipped_failure=1
done
if ((skipped_failure)); then exit 1; fi
log "integration packages: all tests passed"
