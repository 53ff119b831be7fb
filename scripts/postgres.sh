# shellcheck shell=bash
# A private PostgreSQL server for the scripts built on lib.sh.
#
# Sourced after lib.sh (it uses log, die, free_port, wait_gone, tmp_dir and
# ensure_packages):
#     # shellcheck source-path=SCRIPTDIR source=lib.sh
#     source "$script_dir/lib.sh"
#     # shellcheck source-path=SCRIPTDIR source=postgres.sh
#     source "$script_dir/postgres.sh"
#     ensure_postgres_packages
#     start_postgres      # after tmp_dir is set
#     ... "$postgres_url" ...
#     stop_postgres       # or from the script's stop_children / cleanup
#
# start_postgres runs Debian's PostgreSQL binaries (the newest of
# /usr/lib/postgresql/*/bin, else `pg_config --bindir`, else PATH) on a free
# port of 127.0.0.1 only, trust authentication, user postgres, durability
# off (fsync, full_page_writes, and synchronous_commit unless
# postgres_synchronous_commit=on), max_connections=200,
# its cluster in $tmp_dir/postgres (unix socket in there too) and its logs in
# $tmp_dir/postgres.log and $tmp_dir/postgres-initdb.log. initdb and postgres
# refuse to run as root: as root they run as the `postgres` system user (the
# postgresql package creates it) through setpriv, which execs, so that the
# PID recorded is the postmaster's own. Nothing is exported.
#
# State (nothing here stops the server by itself: the script's stop_children
# or cleanup must call stop_postgres; should the script be killed with
# SIGKILL, the postmaster outlives it, but shuts itself down within about a
# minute once $tmp_dir is removed, its lock file gone):
#   postgres_pid     the postmaster (a child of this shell), "" when stopped
#   postgres_port    its TCP port on 127.0.0.1
#   postgres_url     postgresql://postgres@127.0.0.1:PORT/postgres
#   postgres_dir     its data directory, $tmp_dir/postgres
#   postgres_bindir  the directory of the binaries used

postgres_pid=${postgres_pid:-}
postgres_port=${postgres_port:-}
postgres_url=${postgres_url:-}
postgres_dir=${postgres_dir:-}
postgres_bindir=${postgres_bindir:-}
# synchronous_commit of the next start_postgres: off (the tests: faster) or on (a
# commit is in the WAL before it is acknowledged, so it survives a crash of the
# server's processes; fsync stays off: the machine itself is not crashed).
postgres_synchronous_commit=${postgres_synchronous_commit:-off}

# ensure_postgres_packages — the server (postgresql) and libpq's headers.
ensure_postgres_packages() {
    ensure_packages postgresql libpq-dev
}

# find_postgres_bindir — set postgres_bindir to a directory holding initdb,
# postgres and pg_isready: the newest /usr/lib/postgresql/VERSION/bin, else
# `pg_config --bindir` (libpq-dev's pg_config may belong to a client-only
# version, hence second), else the directory of `postgres` on PATH.
find_postgres_bindir() {
    local dir candidates=() found
    [[ -n "$postgres_bindir" ]] && return 0
    while IFS= read -r dir; do
        candidates+=("$dir")
    done < <(compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k5,5Vr || true)
    if command -v pg_config >/dev/null 2>&1; then
        candidates+=("$(pg_config --bindir 2>/dev/null || true)")
    fi
    if found=$(command -v postgres 2>/dev/null); then
        candidates+=("$(dirname "$found")")
    fi
    for dir in "${candidates[@]}"; do
        if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/postgres" && -x "$dir/pg_isready" ]]; then
            postgres_bindir=$dir
            return 0
        fi
    done
    die "PostgreSQL's server binaries (initdb, postgres, pg_isready) were not found in /usr/lib/postgresql/*/bin, pg_config --bindir or PATH (ensure_postgres_packages installs them)"
}

# postgres_socket_dir DIR — DIR when a unix socket fits in it (sun_path holds
# 107 bytes and the setting is a comma-separated list), else "" (TCP only).
postgres_socket_dir() {
    local dir=$1
    if ((${#dir} + 20 > 107)) || [[ "$dir" == *[[:space:],\'\"\\]* ]]; then
        echo ""
    else
        echo "$dir"
    fi
}

# start_postgres — initdb $tmp_dir/postgres (unless it already holds a
# cluster, e.g. after stop_postgres), start the postmaster on a free loopback
# port in the background and wait up to 20 s until it accepts connections;
# retries on another port if the chosen one got taken. Sets postgres_pid,
# postgres_port, postgres_url and postgres_dir.
start_postgres() {
    local as_owner=() socket_dir attempt i status started="" log
    [[ -n "${tmp_dir:-}" ]] || die "start_postgres: tmp_dir is not set"
    if [[ -n "$postgres_pid" ]] && kill -0 "$postgres_pid" 2>/dev/null; then
        die "start_postgres: PostgreSQL already runs (pid $postgres_pid, port $postgres_port)"
    fi
    find_postgres_bindir
    postgres_dir="$tmp_dir/postgres"
    log="$tmp_dir/postgres.log"

    mkdir -p "$postgres_dir"
    if ((EUID == 0)); then
        id -u postgres >/dev/null 2>&1 ||
            die "no 'postgres' user to run PostgreSQL as (root may not run it); it comes with the postgresql package (ensure_postgres_packages)"
        command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to run PostgreSQL as the postgres user"
        as_owner=(setpriv --reuid=postgres --regid=postgres --init-groups)
        # mktemp -d makes tmp_dir 0700: let postgres through (search only, no listing).
        chmod o+x "$tmp_dir"
        chown postgres:postgres "$postgres_dir"
        "${as_owner[@]}" test -w "$postgres_dir" ||
            die "the postgres user cannot write to $postgres_dir (is a parent directory of $tmp_dir closed to it?)"
    fi
    chmod 700 "$postgres_dir"

    if [[ ! -s "$postgres_dir/PG_VERSION" ]]; then
        log "initializing a PostgreSQL $("$postgres_bindir/postgres" --version | awk '{ print $3 }') cluster in $postgres_dir"
        # In the data directory: the postgres user may not be able to enter the current one.
        if ! (cd "$postgres_dir" && exec "${as_owner[@]}" "$postgres_bindir/initdb" -D "$postgres_dir" \
            -U postgres --auth=trust --encoding=UTF8 --no-locale --no-sync) \
            </dev/null >"$tmp_dir/postgres-initdb.log" 2>&1; then
            tail -n 20 "$tmp_dir/postgres-initdb.log" >&2 || true
            die "initdb failed (see $tmp_dir/postgres-initdb.log)"
        fi
    fi

    socket_dir=$(postgres_socket_dir "$postgres_dir")
    for attempt in 1 2 3 4 5; do
        postgres_port=$(free_port) || die "no free loopback port found for PostgreSQL"
        log "starting PostgreSQL on 127.0.0.1:$postgres_port (attempt $attempt)"
        # exec all the way down (subshell, setpriv, postgres): $! is the postmaster.
        (cd "$postgres_dir" && exec "${as_owner[@]}" "$postgres_bindir/postgres" -D "$postgres_dir" \
            -p "$postgres_port" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$socket_dir" \
            -c max_connections=200 -c fsync=off -c synchronous_commit="$postgres_synchronous_commit" \
            -c full_page_writes=off) \
            </dev/null >"$log" 2>&1 &
        postgres_pid=$!
        for ((i = 0; i < 200; i++)); do     # up to 20 s
            status=0
            "$postgres_bindir/pg_isready" -q -h 127.0.0.1 -p "$postgres_port" -U postgres -d postgres -t 2 \
                </dev/null >/dev/null 2>&1 || status=$?
            # (still ours: not some other server that took the port meanwhile)
            if ((status == 0)) && kill -0 "$postgres_pid" 2>/dev/null; then
                started=1
                break
            fi
            kill -0 "$postgres_pid" 2>/dev/null || break
            sleep 0.1
        done
        [[ -n "$started" ]] && break
        if kill -0 "$postgres_pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            stop_postgres
            die "PostgreSQL did not accept connections on port $postgres_port within 20 s (log: $log)"
        fi
        wait "$postgres_pid" 2>/dev/null || true
        postgres_pid=""
        tail -n 5 "$log" >&2 || true
        grep -q 'Address already in use' "$log" ||
            die "PostgreSQL exited at start (log: $log)"
        cp "$log" "$log.$attempt"
    done
    [[ -n "$started" ]] || die "PostgreSQL could not be started (see its log above)"
    postgres_url="postgresql://postgres@127.0.0.1:$postgres_port/postgres"
}

# stop_postgres — fast shutdown (SIGINT) of the postmaster by its PID, waited
# for up to 10 s; then SIGKILL, to it and to the server processes it had
# started. Empties postgres_pid; does nothing when it is already empty.
stop_postgres() {
    local pid=$postgres_pid children=()
    [[ -n "$pid" ]] || return 0
    postgres_pid=""
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    log "stopping PostgreSQL (pid $pid)"
    kill -INT "$pid" 2>/dev/null || true
    if ! wait_gone "$pid"; then
        printf 'warning: PostgreSQL (pid %s) did not stop on SIGINT; sending SIGKILL\n' "$pid" >&2
        mapfile -t children < <(pgrep -P "$pid" || true)
        kill -KILL "$pid" "${children[@]}" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
