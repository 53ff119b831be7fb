# shellcheck shell=bash
# Skipped tests, counted: for scripts/test.sh and Integrations/test.sh.
#
# A test that cannot run here (no REDIS_URL, no redis-sentinel, no Chromium...)
# says so with Swift Testing's `.enabled(if:, "reason")` or `Test.cancel(...)`,
# and `swift test` reports it as skipped (or cancelled), never as passed:
#     ➜ Suite RedisClientTests skipped: "needs REDIS_URL (...)"
#     ➜ Test flaskSessionOnSingleRedisLosesEverySessionAndStaysDown() skipped: "..."
# (a skipped suite is one line, however many tests it holds).
#
# REQUIRE_ALL=1 (CI sets it) turns any skip into a failure: on CI every test must run.

# skipped_lines LOG — the lines of a `swift test` log that report a skipped or cancelled test or suite.
skipped_lines() {
    grep -aE '(Suite|Test) .+ (skipped|cancelled)(: .*|\.)?$' "$1" || true
}

# report_skipped LOG LABEL — prints how many tests or suites LOG reports skipped, and
# which, with their reasons; returns 1 when REQUIRE_ALL=1 and any were.
report_skipped() {
    local log_file=$1 label=$2 lines count
    lines=$(skipped_lines "$log_file")
    count=0
    [[ -n "$lines" ]] && count=$(printf '%s\n' "$lines" | wc -l)
    printf '==> %s: %d skipped (tests or whole suites)\n' "$label" "$count"
    ((count == 0)) && return 0
    printf '%s\n' "$lines" | sed 's/^/      /'
    if [[ "${REQUIRE_ALL:-0}" == 1 ]]; then
        printf '==> %s: REQUIRE_ALL=1 and %d skipped: failing (every test must run here)\n' "$label" "$count"
        return 1
    fi
    return 0
}
