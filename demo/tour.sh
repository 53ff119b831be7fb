#!/usr/bin/env bash
# A guided tour of the cluster demo with curl: starts `session-cluster demo`
# (release build), then, through the balancer with one cookie jar:
#   1. logs in as "ada" and increments a few times (round robin: another node
#      answers each time);
#   2. kills the node that answered last and counts on;
#   3. freezes (SIGSTOP) another node, times a request meanwhile, resumes it;
#   4. restarts the killed node and asks it for the session;
# prints what happened at each step, a verdict per step, and stops the demo
# by its PID. Exits non-zero when an expectation of the strategy failed:
# replicate and redis must keep the session through every step; local (the
# control) is expected to lose it.
#
#     demo/tour.sh [--strategy replicate|redis|local] [--nodes N] [--no-build]
#
# SCRATCH_PATH (default .build) is SwiftPM's build directory; --no-build uses
# the session-cluster binary already there.
set -euo pipefail

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

strategy=replicate
nodes=3
build=1
while (($# > 0)); do
    case "$1" in
        --strategy) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; strategy=$2; shift 2 ;;
        --strategy=*) strategy=${1#*=}; shift ;;
        --nodes) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; nodes=$2; shift 2 ;;
        --nodes=*) nodes=${1#*=}; shift ;;
        --no-build) build=""; shift ;;
        -h | --help) usage; exit 0 ;;
        *) printf 'error: unknown argument %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$strategy" in
    replicate | redis | local) ;;
    *) printf 'error: --strategy must be replicate, redis or local (not %s)\n' "$strategy" >&2; exit 2 ;;
esac
if ! [[ "$nodes" =~ ^[0-9]+$ ]] || ((nodes < 3 || nodes > 16)); then
    printf 'error: --nodes must be 3...16 (the tour kills one node and stops another)\n' >&2
    exit 2
fi

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Changes to the repository root; log, die, wait_gone, build_release, cleanup, ...
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
source "$script_dir/../scripts/lib.sh"

MAX_TIME=6          # seconds, for every request (the balancer gives up on a node after 2 s)
demo_pid=""
demo_status=""
base=""
jar=""
seen_pids=()        # every node and redis-server PID the status showed: all must be gone at the end

# The EXIT trap (lib.sh's cleanup) calls this: stop the demo by its PID.
stop_children() {
    if [[ -n "$demo_pid" ]]; then
        stop_pid "session-cluster demo" "$demo_pid" TERM
        demo_pid=""
    fi
}

install_traps
tmp_dir=$(mktemp -d "${TMPDIR:-/tmp}/session-cluster-tour.XXXXXX")
jar="$tmp_dir/cookies"
: >"$jar"

packages=("${build_packages[@]}" curl jq)
[[ "$strategy" == redis ]] && packages+=(redis-server)
log "checking packages${build:+ and Swift}"
ensure_packages "${packages[@]}"
if [[ -n "$build" ]]; then
    ensure_swift
    build_release
else
    binary="$SCRATCH_PATH/release/session-cluster"
    [[ -x "$binary" ]] || die "$binary not found (run without --no-build)"
fi

# --- helpers ---

say() { printf '%s\n' "$*"; }
if [[ -t 1 ]]; then
    step() { printf '\n\033[1m%s\033[0m\n' "$*"; }
else
    step() { printf '\n%s\n' "$*"; }
fi

# api METHOD PATH [JSON [HEADER]] — one request through the balancer with the
# cookie jar. Sets code (000: no answer), node (X-Served-By, or "balancer"),
# ms (total time), body, count and user (from the JSON answer, "" if absent).
api() {
    local method=$1 path=$2 data=${3:-} header=${4:-} out
    local -a args=(-sS --max-time "$MAX_TIME" -b "$jar" -c "$jar" -X "$method"
        -o "$tmp_dir/body" -D "$tmp_dir/headers" -w '%{http_code} %{time_total}')
    if [[ -n "$data" ]]; then args+=(-H 'Content-Type: application/json' --data "$data"); fi
    if [[ -n "$header" ]]; then args+=(-H "$header"); fi
    : >"$tmp_dir/body"
    : >"$tmp_dir/headers"
    out=$(curl "${args[@]}" "$base$path" 2>"$tmp_dir/curl.err") || true
    code=${out%% *}
    ms=$(awk -v s="${out#* }" 'BEGIN { printf "%d", s * 1000 + 0.5 }')
    node=$(tr -d '\r' <"$tmp_dir/headers" | awk -F': *' 'tolower($1) == "x-served-by" { v = $2 } END { print v }')
    [[ -n "$node" ]] || node=balancer
    body=$(<"$tmp_dir/body")
    count=$(jq -r '.count // empty' <<<"$body" 2>/dev/null || true)
    user=$(jq -r 'if has("user") then (.user // "none") else empty end' <<<"$body" 2>/dev/null || true)
}

# show LABEL — one line for the last api call.
show() {
    local what
    if [[ "$code" == 200 ]]; then
        what="count $count"
        if [[ -n "$user" ]]; then what="user $user, $what"; fi
    elif [[ "$code" == 000 ]]; then
        what="no answer ($(head -c 120 "$tmp_dir/curl.err"))"
    else
        what="$(jq -r '"\(.error): \(.message)"' <<<"$body" 2>/dev/null || head -c 120 <<<"$body")"
    fi
    printf '  %-31s -> %-8s %s  %5d ms  %s\n' "$1" "$node" "$code" "$ms" "$what"
}

# control ACTION NODE — POST /_cluster/nodes/NODE/ACTION; prints the answer.
# The control API refuses a POST without X-Cluster-Control: 1 (other web pages cannot send it).
control() {
    local out
    out=$(curl -sS --max-time "$MAX_TIME" -X POST -H 'X-Cluster-Control: 1' -w ' (HTTP %{http_code})' \
        "$base/_cluster/nodes/$2/$1" 2>&1) || true
    printf '  %-31s -> %s\n' "POST /_cluster/nodes/$2/$1" "$out"
}

# status — GET /_cluster/status into $tmp_dir/status (false when it fails); records PIDs.
status() {
    curl -fsS --max-time "$MAX_TIME" -o "$tmp_dir/status" "$base/_cluster/status" 2>/dev/null || return 1
    local pid
    for pid in $(jq -r '.nodes[].pid // empty, .redis.pid // empty' "$tmp_dir/status"); do
        [[ " ${seen_pids[*]} " == *" $pid "* ]] || seen_pids+=("$pid")
    done
}

# field NODE KEY — one field of a node in the last status.
field() { jq -r --arg n "$1" --arg k "$2" '.nodes[] | select(.name == $n) | .[$k] // "null"' "$tmp_dir/status"; }

# node_line NODE — the node as the status shows it.
node_line() {
    jq -r --arg n "$1" '.nodes[] | select(.name == $n)
        | "  status: \(.name) state \(.state), health \(.health), pid \(.pid // "-"), sessions \(.sessions // "-"), restarts \(.restarts), last exit \(.lastExit // "-")"' \
        "$tmp_dir/status"
}

# wait_node NODE STATE HEALTH SECONDS — until the status shows the node in STATE
# with HEALTH ("" for any); false after SECONDS.
wait_node() {
    local name=$1 want_state=$2 want_health=$3 i
    for ((i = 0; i < $4 * 10; i++)); do
        if status && [[ "$(field "$name" state)" == "$want_state" ]] &&
            [[ -z "$want_health" || "$(field "$name" health)" == "$want_health" ]]; then
            return 0
        fi
        if ! kill -0 "$demo_pid" 2>/dev/null; then
            cat "$tmp_dir/demo.log" >&2
            die "the demo exited (its log is above)"
        fi
        sleep 0.1
    done
    return 1
}

# event PATTERN — the demo's last report line matching PATTERN (its stdout).
event() { grep -E "$1" "$tmp_dir/demo.log" | tail -n 1 || true; }

verdicts=()
failed=0
# verdict N TEXT RESULT — RESULT is survived or lost; checked against the strategy.
verdict() {
    local expected=survived note=""
    [[ "$strategy" == local ]] && expected=lost
    if [[ "$3" != "$expected" ]]; then
        note="  UNEXPECTED: $strategy should have $expected"
        failed=1
    elif [[ "$strategy" == local ]]; then
        note="  (expected: local is the control)"
    fi
    verdicts+=("$(printf '  %s. %-38s %s%s' "$1" "$2" "$3" "$note")")
}

# --- start the demo ---

step "Starting: session-cluster demo --strategy $strategy --nodes $nodes --port 0"
"$binary" demo --port 0 --strategy "$strategy" --nodes "$nodes" </dev/null >"$tmp_dir/demo.log" 2>&1 &
demo_pid=$!
echo "$demo_pid" >"$tmp_dir/child.pid"
start_watchdog TERM     # should this script be SIGKILLed, the demo still gets SIGTERM
for ((i = 0; i < 900; i++)); do     # up to 90 s: nodes start one after another
    base=$(awk '$1 == "dashboard" { print $2 }' "$tmp_dir/demo.log")
    [[ -n "$base" ]] && break
    if ! kill -0 "$demo_pid" 2>/dev/null; then
        cat "$tmp_dir/demo.log" >&2
        die "the demo exited before printing its URL (log above)"
    fi
    sleep 0.1
done
[[ -n "$base" ]] || { cat "$tmp_dir/demo.log" >&2; die "the demo printed no URL within 90 s"; }
base=${base%/}
say "  demo pid $demo_pid; dashboard $base/ (open it to watch the cluster panel during the tour)"
status || die "GET $base/_cluster/status failed"
jq -r '.nodes[] | "  \(.name): pid \(.pid), port \(.port), \(.state), health \(.health)"' "$tmp_dir/status"
[[ "$strategy" == redis ]] && jq -r '"  redis-server: pid \(.redis.pid), port \(.redis.port)"' "$tmp_dir/status"
# The balancer marks a node up after two good health checks (250 ms apart).
for name in $(jq -r '.nodes[].name' "$tmp_dir/status"); do
    wait_node "$name" running up 15 || die "$name is not up in the balancer after 15 s"
done

# --- 1. log in, count ---

step "1. Log in as ada and count: round robin sends each request to the next node"
api POST /api/login '{"user":"ada"}'
show 'POST /api/login {"user":"ada"}'
[[ "$code" == 200 && "$user" == ada ]] || die "login failed: HTTP $code $body"
served=()
counts=()
for ((i = 0; i < nodes + 1; i++)); do
    api POST /api/counter
    show "POST /api/counter"
    served+=("$node")
    counts+=("${count:-?}")
done
api GET /api/session
show "GET /api/session"
last_count=${counts[-1]}
victim=${served[-1]}
expected_counts=$(seq -s ' ' 1 $((nodes + 1)))
distinct=$(printf '%s\n' "${served[@]}" | sort -u | wc -l)
say "  answered by: ${served[*]} ($distinct different nodes); counts: ${counts[*]}"
if [[ "${counts[*]}" == "$expected_counts" && "$user" == ada && "$count" == "$last_count" ]]; then
    say "  -> every node knew the session: the count went on and ada stayed logged in."
    verdict 1 "session across nodes (round robin)" survived
else
    say "  -> the session did not follow the request to the next node (counts ${counts[*]}, user ${user:-?})."
    if [[ "$strategy" == local ]]; then
        say "     With local, each node keeps sessions in its own memory. The cookie names a session"
        say "     only the node that made it knows; the next node finds nothing, starts a fresh session"
        say "     (count 1, nobody logged in) and sends a new cookie. This is what sharing fixes."
    fi
    verdict 1 "session across nodes (round robin)" lost
fi

# --- 2. kill the node that answered last ---

step "2. Kill $victim (SIGKILL), the node that answered last"
control kill "$victim"
if wait_node "$victim" dead "" 10; then
    say "  the supervisor noticed: $(event "$victim .*SIGKILL" | sed 's/^ *//')"
else
    say "  the supervisor did not report $victim dead within 10 s"
fi
# Wait (bounded) until the balancer's health checks also mark it down.
wait_node "$victim" dead down 5 || true
node_line "$victim"
before=$last_count
ok=1
after=()
for ((i = 0; i < 3; i++)); do
    api POST /api/counter
    show "POST /api/counter"
    after+=("${count:-?}")
    [[ "$code" == 200 && "$node" != "$victim" ]] || ok=""
    [[ "${count:-}" == "$((before + i + 1))" ]] || ok=""
    last_count=${count:-$last_count}
done
api GET /api/session
show "GET /api/session"
[[ "$code" == 200 && "$user" == ada && "$count" == "$last_count" ]] || ok=""
if [[ -n "$ok" ]]; then
    case "$strategy" in
        replicate) why="the other nodes hold copies of the session" ;;
        *) why="the session lives in Redis, not in $victim" ;;
    esac
    say "  -> the session survived: the count went on from $before (${after[*]}) and ada is still logged in; $why."
    verdict 2 "$victim killed" survived
else
    say "  -> the session did not survive (counts before: $before, after: ${after[*]}; user ${user:-?})."
    if [[ "$strategy" == local ]]; then
        say "     With local, whatever $victim held died with it, and the others never had it."
    fi
    verdict 2 "$victim killed" lost
fi

# --- 3. freeze another node ---

status || die "GET /_cluster/status failed"
frozen=$(jq -r --arg v "$victim" '[.nodes[] | select(.name != $v and .state == "running")][0].name // empty' "$tmp_dir/status")
[[ -n "$frozen" ]] || die "no running node left to stop"
step "3. Stop $frozen (SIGSTOP): it freezes with its connections open, like a long GC pause"
control stop "$frozen"
say "  requests right away (plain POSTs, no Idempotency-Key), until one has met the frozen node:"
timeouts=0
last_seen_error=""
for ((i = 0; i < 4; i++)); do
    api POST /api/counter
    show "POST /api/counter"
    if [[ "$code" != 200 ]]; then
        timeouts=$((timeouts + 1))
        last_seen_error=$code
        continue
    fi
    [[ -n "$count" ]] && last_count=$count
    if ((timeouts > 0)); then break; fi
done
if ((timeouts > 0)); then
    say "  -> that request went to $frozen, whose kernel took it but which cannot answer: the balancer"
    say "     gave up after its 2 s response timeout and answered $last_seen_error. It repeats no request that"
    say "     timed out (the node may still act on it). Meanwhile its health checks marked $frozen down,"
    say "     so the next request went to another node at once."
else
    say "  -> no request went to $frozen: the health checks had marked it down first."
fi
wait_node "$frozen" stopped down 5 || true
node_line "$frozen"
control resume "$frozen"
if wait_node "$frozen" running up 15; then
    say "  $frozen resumed and the balancer sends it requests again (health up)."
else
    say "  $frozen did not come back up in the balancer within 15 s"
fi
api GET /api/session
show "GET /api/session"
ok=1
if [[ "$code" != 200 || "$user" != ada ]]; then
    ok=""
elif [[ "$count" == "$last_count" ]]; then
    ((timeouts == 0)) || say "  the count is $count: the increment that got $last_seen_error was never applied."
elif ((count > last_count && count <= last_count + timeouts)); then
    say "  the count is $count, not $last_count: the increment that got $last_seen_error was applied after all"
    say "  when $frozen woke up and read it (a timeout does not mean the request failed)."
else
    ok=""
fi
[[ "$code" == 200 && -n "$count" ]] && last_count=$count
if [[ -n "$ok" ]]; then
    say "  -> the session survived the freeze: ada is still logged in, no increment was lost."
    verdict 3 "$frozen frozen and resumed" survived
else
    say "  -> the session did not come through (count ${count:-?}, user ${user:-?})."
    verdict 3 "$frozen frozen and resumed" lost
fi

# --- 4. restart the killed node ---

step "4. Restart $victim and ask it for the session"
control restart "$victim"
if wait_node "$victim" running up 30; then
    say "  the supervisor started it again: $(event "$victim (is up|restarting)" | sed 's/^ *//')"
else
    say "  $victim is not up within 30 s"
fi
node_line "$victim"
port=$(field "$victim" port)
held=$(curl -fsS --max-time "$MAX_TIME" "http://127.0.0.1:$port/metrics" 2>/dev/null |
    awk '$1 ~ /^session_store_sessions/ { print $2 + 0; exit }' || true)
case "$strategy" in
    replicate) say "  $victim holds ${held:-?} session(s) right after its start: it received them from its peers (state transfer) before answering /healthz." ;;
    redis) say "  $victim holds no sessions itself (its /metrics has ${held:-no} session count): it reads them from Redis." ;;
    local) say "  $victim holds ${held:-?} session(s): it starts empty, what it had died with the old process." ;;
esac
ok=""
for ((i = 0; i < 2 * nodes + 2; i++)); do
    api GET /api/session
    show "GET /api/session"
    if [[ "$node" == "$victim" ]]; then
        [[ "$code" == 200 && "$user" == ada && "$count" == "$last_count" ]] && ok=1
        break
    fi
done
if [[ "$node" != "$victim" ]]; then
    say "  -> $victim did not answer any of these requests."
    verdict 4 "$victim restarted, serves the session" lost
elif [[ -n "$ok" ]]; then
    say "  -> $victim, just restarted, knows the session: user ada, count $count."
    verdict 4 "$victim restarted, serves the session" survived
else
    say "  -> $victim answered without the session (count ${count:-?}, user ${user:-?})."
    verdict 4 "$victim restarted, serves the session" lost
fi

# --- verdicts, stop ---

step "Verdict ($strategy)"
printf '%s\n' "${verdicts[@]}"

step "Stopping the demo (SIGTERM to pid $demo_pid)"
status || true
demo=$demo_pid
kill -TERM "$demo" 2>/dev/null || true
if wait_gone "$demo"; then
    demo_status=0
    wait "$demo" 2>/dev/null || demo_status=$?
    say "  the demo exited with status $demo_status:"
    if ((demo_status != 0)); then failed=1; fi
    sed -n '/signal 15/,$p' "$tmp_dir/demo.log" | sed 's/^/    /'
else
    say "  the demo did not exit within 10 s of SIGTERM: sending SIGKILL"
    kill -KILL "$demo" 2>/dev/null || true
    wait "$demo" 2>/dev/null || true
    failed=1
fi
demo_pid=""
left=()
for pid in "$demo" "${seen_pids[@]}"; do
    wait_gone "$pid" || left+=("$pid")
done
if ((${#left[@]} == 0)); then
    say "  nothing left running: the demo and every process it started (pids ${seen_pids[*]}) are gone."
else
    say "  still running after 10 s: ${left[*]}"
    failed=1
fi
if ((failed)); then
    say "FAILED: an expectation of the $strategy strategy did not hold (see above)."
    exit 1
fi
if [[ "$strategy" == local ]]; then
    say "OK: local lost the session, as the control should; replicate and redis keep it."
else
    say "OK: with $strategy the session survived every step."
fi
