#!/usr/bin/env bash
# Build the DocC documentation of the public library modules (the `.library`
# products of Package.swift) with the swift-docc-plugin
# (`swift package generate-documentation`), and fail if anything printed a
# warning: DocC (unresolved ``links``, parameter and return value docs that do
# not match the signature, catalog problems) or the build before it.
#
#     scripts/docs.sh                           # every public module
#     scripts/docs.sh SessionCore MiniHTTP      # only these products
#
# The whole output is shown as it comes; at the end, the warning lines again
# and their count. Exit code: 0 when the documentation was built without a
# warning, 1 when it printed warnings, else the failed command's.
# The archives land in $DOCS_SCRATCH_PATH/plugins/Swift-DocC/outputs/<Module>.doccarchive.
#
# Environment: DOCS_SCRATCH_PATH (this script's own SwiftPM build directory,
# default .build-docs, so that it never shares or rebuilds the tests' .build).
# Installs the Debian packages the build needs (libhiredis-dev, libsodium-dev)
# with apt-get when missing.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$script_dir/ensure-packages.sh"
cd "$script_dir/.."

DOCS_SCRATCH_PATH=${DOCS_SCRATCH_PATH:-.build-docs}

ensure_packages "${build_packages[@]}"
ensure_swift

if (($# > 0)); then
    products=("$@")
else
    mapfile -t products < <(sed -n 's/.*\.library(name: *"\([^"]*\)".*/\1/p' Package.swift)
    if ((${#products[@]} == 0)); then
        echo 'error: found no .library product in Package.swift' >&2
        exit 2
    fi
fi
args=()
for product in "${products[@]}"; do args+=(--product "$product"); done

log=$(mktemp "${TMPDIR:-/tmp}/docs.XXXXXX")
trap 'rm -f "$log"' EXIT

printf '==> generating documentation for: %s\n' "${products[*]}"
status=0
swift package --scratch-path "$DOCS_SCRATCH_PATH" generate-documentation "${args[@]}" 2>&1 | tee "$log" || status=$?

warnings=$(grep -c 'warning:' "$log" || true)
if ((warnings > 0)); then
    printf '\n==> %d warning(s):\n' "$warnings"
    grep 'warning:' "$log"
fi
if ((status != 0)); then
    printf 'error: swift package generate-documentation failed (exit code %d)\n' "$status" >&2
    exit "$status"
fi
if ((warnings > 0)); then
    exit 1
fi
printf '==> documentation built without warnings: %s/plugins/Swift-DocC/outputs\n' "$DOCS_SCRATCH_PATH"
