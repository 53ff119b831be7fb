#!/usr/bin/env bash
# Benchmark the distributed locks of every backend in one run: starts a
# private redis-server, PostgreSQL and 3-server ZooKeeper ensemble on free
# loopback ports (stopped by PID at the end), builds session-cluster
# (release) and runs `session-cluster bench-locks` against them. It prints,
# per backend: acquire+release per second on a free lock; the hand-over
# latency among 8 contenders (p50 / p99); how long until a SIGKILLed
# holder's lock is taken over; and, over PAUSED_ROUNDS holders SIGSTOPped
# past their lease while another client took the lock and wrote, how many of
# their late writes an unfenced resource took and a fenced one refused.
# Then (FAILOVER=1, the default) the services fail under 8 contenders:
# Redis's primary SIGKILLed under Sentinel (a private primary, replica and
# Sentinel of the benchmark's own), PostgreSQL crashed and restarted (one of
# its backends SIGKILLed: the postmaster ends every session and restarts) and
# the ZooKeeper ensemble's leader SIGKILLed; it prints the grants, the holds that overlapped, what the fenced
# resource refused and the unfenced one took out of turn, and how long until
# the next grant.
#
# Environment: SECONDS_PER_PHASE (default 3), LEASE_MS (the killed and paused
# holders' lease, default 1000), PAUSED_ROUNDS (default 5), BACKENDS (default
# redis,postgres,postgres-advisory,zookeeper), FAILOVER (1: the failover
# phases too, 0: not; default 1), SCRATCH_PATH (SwiftPM build directory,
# default .build).
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$script_dir/lib.sh"

SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-3}
LEASE_MS=${LEASE_MS:-1000}
PAUSED_ROUNDS=${PAUSED_ROUNDS:-5}
BACKENDS=${BACKENDS:-redis,postgres,postgres-advisory,zookeeper}
FAILOVER=${FAILOVER:-1}
positive SECONDS_PER_PHASE "$SECONDS_PER_PHASE"
positive LEASE_MS "$LEASE_MS"
positive PAUSED_ROUNDS "$PAUSED_ROUNDS"

install_traps

log "checking packages and Swift"
ensure_packages "${build_packages[@]}" redis-server redis-tools redis-sentinel
ensure_postgres_packages
ensure_zookeeper_packages
ensure_swift

build_release

tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-bench-locks.XXXXXX")
start_redis
# Commits in the WAL before they are acknowledged, as in production: with the tests' off, a crash
# of the server's processes loses the last commits, sequence values with them (fencing tokens repeat).
postgres_synchronous_commit=on
start_postgres
start_zookeeper_ensemble
# Should this script be killed with SIGKILL (no trap runs), still stop the servers.
start_watchdog INT

echo
echo "nproc: $(nproc)    kernel: $(uname -r)    date: $(date -u +%F)    load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2), $("$postgres_bindir/postgres" --version), ZooKeeper $(dpkg-query -W -f '${Version}' zookeeper 2>/dev/null || echo '?') (3 servers, tickTime 200 ms)"
failover=()
if [[ "$FAILOVER" == 1 ]]; then
    failover=(--failover --postgres-pid "$postgres_pid" --zookeeper-pids "$(IFS=,; echo "${zookeeper_pids[*]}")")
fi
echo "command: session-cluster bench-locks --backends $BACKENDS --seconds $SECONDS_PER_PHASE --lease-ms $LEASE_MS --paused-rounds $PAUSED_ROUNDS ${failover[*]:+--failover}"
echo
"$binary" bench-locks --backends "$BACKENDS" --seconds "$SECONDS_PER_PHASE" --lease-ms "$LEASE_MS" \
    --paused-rounds "$PAUSED_ROUNDS" --redis "redis://127.0.0.1:$redis_port/0" --postgres "$postgres_url" \
    --zookeeper "$zookeeper_connect" "${failover[@]}"
