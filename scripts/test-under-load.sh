#!/usr/bin/env bash
# The core package's test suite under load: `scripts/test.sh` ROUNDS times in
# a row (default 3, without the adapters' packages) while `stress-ng --cpu N`
# keeps the cores busy (N: STRESS_CPUS, default every core). It checks that no
# test depends on timing: the suite must pass every round on a loaded 2-core
# machine. Extra arguments go to scripts/test.sh (e.g. --integration, or
# --filter BalancerTests). Installs stress-ng when missing; stops it by its
# PID. Exit code: the first failing round's.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

ROUNDS=${ROUNDS:-3}
STRESS_CPUS=${STRESS_CPUS:-$(nproc)}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS must be a positive integer, got '$ROUNDS'" >&2; exit 2; }
[[ "$STRESS_CPUS" =~ ^[1-9][0-9]*$ ]] || { echo "error: STRESS_CPUS must be a positive integer, got '$STRESS_CPUS'" >&2; exit 2; }

stress_pid=""
# shellcheck disable=SC2317  # called by cleanup (lib.sh), from the EXIT trap
stop_children() {
    if [[ -n "$child_pid" ]]; then
        # A background bash (scripts/test.sh) ignores SIGINT: SIGTERM, which it turns into SIGINT for swift.
        kill -TERM "$child_pid" 2>/dev/null || true
        wait_gone "$child_pid" || true
        kill -KILL "$child_pid" 2>/dev/null || true
        wait "$child_pid" 2>/dev/null || true
        child_pid=""
    fi
    if [[ -n "$stress_pid" ]]; then
        stop_pid stress-ng "$stress_pid"
        stress_pid=""
    fi
}
install_traps

ensure_packages "${build_packages[@]}" stress-ng
ensure_swift
tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-load.XXXXXX")

log "swift build --build-tests first, without load (scratch path $SCRATCH_PATH)"
run swift build --build-tests --scratch-path "$SCRATCH_PATH"

log "stress-ng --cpu $STRESS_CPUS beside the tests"
# --timeout: it stops by itself even should this script be killed outright (45 min a round is far
# beyond a round's length).
stress-ng --cpu "$STRESS_CPUS" --quiet --timeout "$((ROUNDS * 45))m" &
stress_pid=$!

export SKIP_INTEGRATIONS=1
status=0
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round of $ROUNDS: scripts/test.sh${*:+ $*} under load"
    started=$SECONDS
    run bash "$script_dir/test.sh" "$@" || status=$?
    if ((status != 0)); then
        log "round $round failed (exit code $status) after $((SECONDS - started)) s"
        exit "$status"
    fi
    log "round $round passed in $((SECONDS - started)) s"
done
log "all $ROUNDS rounds passed under stress-ng --cpu $STRESS_CPUS"
