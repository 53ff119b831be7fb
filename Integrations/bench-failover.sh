#!/usr/bin/env bash
# Failover benchmark of a framework cluster: 3 example nodes (Hummingbird or
# Vapor) behind `session-cluster proxy`, measured by `session-cluster bench
# --target`, with node-2 killed (SIGKILL) at a third of the run and
# restarted at two thirds. Everything it starts (redis-server, nodes,
# balancer) is stopped by PID when it ends, however it ends.
#
#   Integrations/bench-failover.sh hummingbird|vapor [redis|replicate]
#
# Environment: DURATION (default 30s), USERS (200), CONFIG (release or
# debug), REPORT (the report directory, default a temp dir that is kept),
# SESSION_CLUSTER_BIN and NODE_BIN (use these binaries instead of building).
set -euo pipefail

framework=${1:-hummingbird}
store=${2:-redis}
case "$framework" in
    hummingbird) package=SessionClusterHummingbird product=hummingbird-node ;;
    vapor) package=SessionClusterVapor product=vapor-node ;;
    *) echo "usage: $0 hummingbird|vapor [redis|replicate]" >&2; exit 2 ;;
esac
case "$store" in redis | replicate) ;; *) echo "store must be redis or replicate" >&2; exit 2 ;; esac

here=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../scripts/lib.sh
source "$here/../scripts/lib.sh"   # log, die, free_port, start_redis, stop_pid, wait_http, traps; cd to the root

CONFIG=${CONFIG:-release}
DURATION=${DURATION:-30s}
USERS=${USERS:-200}

stop_children() {
    local pidfile
    if [[ -n "${proxy_pid:-}" ]]; then stop_pid balancer "$proxy_pid"; proxy_pid=""; fi
    for pidfile in "$tmp_dir"/nodes/*.pid; do
        [[ -e "$pidfile" ]] || continue
        local pid
        pid=$(<"$pidfile")
        kill -CONT "$pid" 2>/dev/null || true
        stop_pid "$(basename "$pidfile" .pid)" "$pid"
        rm -f "$pidfile"
    done
}
install_traps
tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/failover-$framework.XXXXXX")
mkdir -p "$tmp_dir/nodes"
report=${REPORT:-$(mktemp -d "${TMPDIR:-/tmp}/failover-report-$framework-$store.XXXXXX")}

if [[ -n "${SESSION_CLUSTER_BIN:-}" ]]; then
    binary=$SESSION_CLUSTER_BIN
else
    log "building session-cluster ($CONFIG)"
    swift build -c "$CONFIG" --product session-cluster --scratch-path "$SCRATCH_PATH"
    binary="$SCRATCH_PATH/$CONFIG/session-cluster"
fi
if [[ -n "${NODE_BIN:-}" ]]; then
    node_bin=$NODE_BIN
else
    log "building $product ($CONFIG)"
    (cd "$here/$package" && swift build -c "$CONFIG" --product "$product")
    node_bin="$here/$package/.build/$CONFIG/$product"
fi
[[ -x "$binary" && -x "$node_bin" ]] || die "binaries not found: $binary $node_bin"

if [[ "$store" == redis ]]; then
    start_redis
    start_watchdog TERM
    log "redis-server on 127.0.0.1:$redis_port (pid $redis_pid)"
fi
export SESSION_CLUSTER_SECRET=${SESSION_CLUSTER_SECRET:-failover-bench-cluster-secret}

names=(node-1 node-2 node-3)
ports=() repl_ports=()
for _ in "${names[@]}"; do ports+=("$(free_port)"); repl_ports+=("$(free_port)"); done
peers=$(printf '127.0.0.1:%s,' "${repl_ports[@]}")
peers=${peers%,}

# Each node's command line is kept so the fault command can restart it.
# start-node.sh NAME starts it in the background without the descriptors its
# caller holds (the benchmark waits for the fault command through one: a
# node that kept it open would hang the benchmark) and writes its PID.
cat >"$tmp_dir/start-node.sh" <<START
#!/usr/bin/env bash
dir="$tmp_dir/nodes"
(
    for fd in /proc/self/fd/*; do
        n=\${fd##*/}
        if ((n > 2)); then eval "exec \$n>&-"; fi
    done 2>/dev/null
    eval "exec \$(<"\$dir/\$1.cmd")"
) </dev/null >>"\$dir/\$1.log" 2>&1 &
echo \$! >"\$dir/\$1.pid"
START
chmod +x "$tmp_dir/start-node.sh"

for i in 0 1 2; do
    args=(--port "${ports[$i]}" --node-id "${names[$i]}" --store "$store" --log-level warning)
    if [[ "$store" == redis ]]; then
        args+=(--redis "redis://127.0.0.1:$redis_port/0")
    else
        args+=(--replication-port "${repl_ports[$i]}" --peers "$peers" --replication-mode sync)
    fi
    printf '%q ' "$node_bin" "${args[@]}" >"$tmp_dir/nodes/${names[$i]}.cmd"
    "$tmp_dir/start-node.sh" "${names[$i]}"
done
for i in 0 1 2; do
    wait_http "${names[$i]}" "http://127.0.0.1:${ports[$i]}/healthz" "$(<"$tmp_dir/nodes/${names[$i]}.pid")" ||
        { tail -n 20 "$tmp_dir/nodes/${names[$i]}.log" >&2; die "${names[$i]} did not start"; }
done
log "nodes up: ${names[*]} on ports ${ports[*]} ($framework, --store $store)"

cat >"$tmp_dir/fault.sh" <<FAULT
#!/usr/bin/env bash
# Carries out a fault of the benchmark on a node: \$FAULT_ACTION, \$FAULT_NODE.
set -eu
dir="$tmp_dir/nodes"
pid=\$(cat "\$dir/\$FAULT_NODE.pid")
case "\$FAULT_ACTION" in
    kill) kill -KILL "\$pid" ;;
    stop) kill -STOP "\$pid" ;;
    resume) kill -CONT "\$pid" ;;
    restart)
        if kill -0 "\$pid" 2>/dev/null; then kill -KILL "\$pid"; sleep 0.2; fi
        "$tmp_dir/start-node.sh" "\$FAULT_NODE" ;;
esac
FAULT
chmod +x "$tmp_dir/fault.sh"

proxy_port=$(free_port)
backends=()
for i in 0 1 2; do backends+=(--backend "${names[$i]}=127.0.0.1:${ports[$i]}"); done
"$binary" proxy --listen "127.0.0.1:$proxy_port" "${backends[@]}" --health-check-interval-ms 500 \
    </dev/null >"$tmp_dir/proxy.log" 2>&1 &
proxy_pid=$!
wait_http balancer "http://127.0.0.1:$proxy_port/healthz" "$proxy_pid" || die "the balancer did not start"
log "balancer on 127.0.0.1:$proxy_port (pid $proxy_pid)"

log "session-cluster bench --target http://127.0.0.1:$proxy_port --duration $DURATION --users $USERS"
"$binary" bench --target "http://127.0.0.1:$proxy_port" --fault-command "$tmp_dir/fault.sh" \
    --duration "$DURATION" --users "$USERS" --report "$report"
log "report: $report/report.html"
