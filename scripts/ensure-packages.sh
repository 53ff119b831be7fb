#!/usr/bin/env bash
# Make sure the Debian packages a script needs are installed, and that
# `swift` is on PATH.
#
# Sourced by the other scripts (so that the PATH fix reaches them):
#     source scripts/ensure-packages.sh
#     ensure_packages libhiredis-dev curl
#     ensure_swift
# or called directly:
#     scripts/ensure-packages.sh libhiredis-dev curl
#
# Only the missing packages are installed; `apt-get update` runs once, and
# only when something is missing; `sudo` is used when not root.

# The Debian packages the Swift build itself needs: the system libraries
# the package links (CHiredis, CSodium, CLibPQ, CZooKeeper).
build_packages=(libhiredis-dev libsodium-dev libpq-dev libzookeeper-mt-dev)

# Print an error on stderr.
ensure_packages_error() {
    printf 'error: %s\n' "$*" >&2
}

# ensure_packages PKG... — install the packages of the list that are missing.
ensure_packages() {
    local pkg status
    local -a missing=()

    if ! command -v dpkg >/dev/null 2>&1; then
        printf 'warning: dpkg not found (not Debian?); make sure these are installed: %s\n' "$*" >&2
        return 0
    fi
    for pkg in "$@"; do
        status=$(dpkg -s "$pkg" 2>/dev/null || true)
        if ! grep -qx 'Status: install ok installed' <<<"$status"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi

    if ! command -v apt-get >/dev/null 2>&1; then
        ensure_packages_error "missing packages: ${missing[*]}, and apt-get is not available; install them by hand"
        return 1
    fi
    local -a sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null 2>&1; then
            ensure_packages_error "missing packages: ${missing[*]}; installing them needs root, and sudo is not installed (run as root, or: apt-get install ${missing[*]})"
            return 1
        fi
        sudo=(sudo)
    fi

    local -a apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=120)
    local log
    log=$(mktemp "${TMPDIR:-/tmp}/ensure-packages.XXXXXX")

    echo "==> installing missing packages: ${missing[*]}"
    if [[ -z "${ENSURE_PACKAGES_UPDATED:-}" ]]; then
        if ! "${apt[@]}" update >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            ensure_packages_error "apt-get update failed (see above); cannot install: ${missing[*]}"
            return 1
        fi
        ENSURE_PACKAGES_UPDATED=1
    fi
    if ! "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        ensure_packages_error "apt-get install failed (see above) for: ${missing[*]}"
        return 1
    fi
    rm -f "$log"
}

# ensure_swift — put the Swift toolchain on PATH (/opt/swift) if needed, and
# fail clearly if there is none.
ensure_swift() {
    local dir
    if ! command -v swift >/dev/null 2>&1; then
        for dir in /opt/swift/usr/bin /opt/swift/bin; do
            if [[ -x "$dir/swift" ]]; then
                PATH="$dir:$PATH"
                export PATH
                break
            fi
        done
    fi
    if ! command -v swift >/dev/null 2>&1; then
        ensure_packages_error "Swift is not installed (no 'swift' on PATH, nor in /opt/swift/usr/bin or /opt/swift/bin)."
        ensure_packages_error "Install a Swift 6 toolchain for Linux (https://www.swift.org/install/) and put its usr/bin on PATH."
        return 1
    fi
    local version major
    version=$(swift --version 2>&1 || true)
    major=$(sed -n 's/.*Swift version \([0-9][0-9]*\)\..*/\1/p' <<<"$version" | head -n 1)
    if [[ -n "$major" ]] && ((major < 6)); then
        ensure_packages_error "Swift 6 or later is needed; found: $(head -n 1 <<<"$version")"
        return 1
    fi
}

# Called directly rather than sourced: install the packages given as
# arguments and check Swift.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    ensure_packages "$@"
    ensure_swift
fi
