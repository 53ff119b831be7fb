# shellcheck shell=bash
# Unit and integration suites apart, for scripts/test.sh and Integrations/test.sh.
#
# An integration suite needs more than the test process: a redis-server or a Redis
# Cluster, a child process (the session-cluster binary, an example node, redis-server,
# curl, Chromium, Python) or a cluster of them. It says so with the Swift Testing tag
# `.integration` (TestSupport's `Tag.integration`) on its `@Suite`; every other suite
# is a unit suite. Swift 6.3's `swift test` cannot select tags (`--filter tag:NAME`
# comes with a later Swift Testing), so these helpers read the tags from the sources
# and select by test ID (`Module.Suite/test()`) with `--filter` / `--skip`.

# integration_suites TESTS_DIR — prints `Module.Suite` for every suite tagged
# `.integration` under TESTS_DIR (one directory per test target). Fails when the
# tag is on a single `@Test`: only whole suites are tagged, so selection stays exact.
integration_suites() {
    local tests_dir=$1 file module
    while IFS= read -r file; do
        module=${file#"$tests_dir"/}
        module=${module%%/*}
        awk -v module="$module" -v file="$file" '
            /^[[:space:]]*@Suite/ { attribute = "suite" }
            /^[[:space:]]*@Test/ { attribute = "test" }
            /\.tags\(/ && /\.integration/ {
                if (attribute == "test") {
                    printf "error: %s:%d: tag the @Suite, not a single @Test, with .integration\n", file, NR > "/dev/stderr"
                    failed = 1
                    exit 1
                }
                pending = 1
            }
            pending && match($0, /(struct|class|enum|actor|extension)[[:space:]]+[A-Za-z_][A-Za-z0-9_]*/) {
                declaration = substr($0, RSTART, RLENGTH)
                sub(/^(struct|class|enum|actor|extension)[[:space:]]+/, "", declaration)
                print module "." declaration
                pending = 0
            }
            END { exit failed }
        ' "$file" || return 1
    done < <(grep -rl --include='*.swift' -e '\.integration' "$tests_dir" | sort)
}

# integration_regex TESTS_DIR — a regular expression that matches the test IDs of
# every integration suite under TESTS_DIR (for `swift test --filter` / `--skip`).
integration_regex() {
    local suites
    suites=$(integration_suites "$1") || return 1
    [[ -n "$suites" ]] || { echo "error: no suite under $1 is tagged .integration" >&2; return 1; }
    printf '^(%s)/' "$(printf '%s\n' "$suites" | sed 's/\./\\./g' | paste -sd '|')"
}
