#!/usr/bin/env bash
# Build the DocC documentation of the public library modules (the `.library`
# products of Package.swift) with the swift-docc-plugin
# (`swift package generate-documentation`), and fail if anything printed a
# warning: DocC (unresolved ``links``, parameter and return value docs that do
# not match the signature, catalog problems) or the build before it.
#
#     scripts/docs.sh                           # every public module of the root package
#     scripts/docs.sh SessionCore MiniHTTP      # only these products of the root package
#     scripts/docs.sh --integrations            # the root package, then the adapter packages
#                                               # (Integrations/Shared, SessionClusterHummingbird,
#                                               # SessionClusterVapor; they build NIO, Hummingbird
#                                               # and Vapor: slow the first time)
#
# The whole output is shown as it comes; at the end, the warning lines again
# and their count. Warnings about dependencies (SwiftPM's about their files,
# the compiler's in their sources under checkouts/) are theirs and not counted.
# Exit code: 0 when the documentation was built without a warning, 1 when it
# printed warnings, else the failed command's.
# The archives land in <scratch>/plugins/Swift-DocC/outputs/<Module>.doccarchive.
#
# Environment: DOCS_SCRATCH_PATH (this script's own SwiftPM build directory,
# default .build-docs, so that it never shares or rebuilds the tests' .build;
# each adapter package gets DOCS_SCRATCH_PATH/integrations/<package>).
# Installs the Debian packages the build needs (libhiredis-dev, libsodium-dev)
# with apt-get when missing.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$script_dir/ensure-packages.sh"
cd "$script_dir/.."
root=$PWD

integrations=0
requested=()
for arg in "$@"; do
    case "$arg" in
        --integrations) integrations=1 ;;
        -h | --help)
            sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        -*)
            echo "error: unknown option '$arg' (see --help)" >&2
            exit 2
            ;;
        *) requested+=("$arg") ;;
    esac
done

DOCS_SCRATCH_PATH=${DOCS_SCRATCH_PATH:-.build-docs}
[[ "$DOCS_SCRATCH_PATH" == /* ]] || DOCS_SCRATCH_PATH="$root/$DOCS_SCRATCH_PATH"

ensure_packages "${build_packages[@]}"
ensure_swift

log=$(mktemp "${TMPDIR:-/tmp}/docs.XXXXXX")
warnings_file=$(mktemp "${TMPDIR:-/tmp}/docs-warnings.XXXXXX")
trap 'rm -f "$log" "$warnings_file"' EXIT

# library_products DIR — the names of the .library products of DIR/Package.swift.
library_products() {
    sed -n 's/.*\.library(name: *"\([^"]*\)".*/\1/p' "$1/Package.swift"
}

# own_warnings SCRATCH — the warning lines of $log about this repository's code: SwiftPM's
# warnings that name a dependency ('<dependency>': ...) and anything under SCRATCH/checkouts/
# are the dependencies' own.
own_warnings() {
    local scratch=$1
    local -a patterns=("/checkouts/")
    local dependency
    if [[ -d "$scratch/checkouts" ]]; then
        for dependency in "$scratch/checkouts"/*; do
            patterns+=("warning: '$(basename "$dependency")':")
        done
    fi
    grep 'warning:' "$log" | grep -v -i -F -f <(printf '%s\n' "${patterns[@]}") || true
}

# document DIR SCRATCH PRODUCT... — generates the documentation of the products of the package
# in DIR; appends its own warnings to $warnings_file. Returns swift's exit code.
document() {
    local dir=$1 scratch=$2 status=0
    shift 2
    local -a args=()
    local product
    for product in "$@"; do args+=(--product "$product"); done
    local label=${dir#"$root"/}
    [[ "$dir" == "$root" ]] && label="root package"
    printf '==> %s: generating documentation for %s\n' "$label" "$*"
    (cd "$dir" && swift package --scratch-path "$scratch" generate-documentation "${args[@]}") 2>&1 | tee "$log" ||
        status=$?
    own_warnings "$scratch" >>"$warnings_file"
    if ((status != 0)); then
        printf 'error: swift package generate-documentation failed in %s (exit code %d)\n' "$dir" "$status" >&2
    fi
    return "$status"
}

status=0
if ((${#requested[@]} > 0)); then
    products=("${requested[@]}")
else
    mapfile -t products < <(library_products "$root")
    if ((${#products[@]} == 0)); then
        echo 'error: found no .library product in Package.swift' >&2
        exit 2
    fi
fi
document "$root" "$DOCS_SCRATCH_PATH" "${products[@]}" || status=$?

if ((integrations && status == 0)); then
    for package in Shared SessionClusterHummingbird SessionClusterVapor; do
        mapfile -t products < <(library_products "$root/Integrations/$package")
        document "$root/Integrations/$package" "$DOCS_SCRATCH_PATH/integrations/$package" "${products[@]}" || {
            status=$?
            break
        }
    done
fi

warnings=$(wc -l <"$warnings_file")
if ((warnings > 0)); then
    printf '\n==> %d warning(s):\n' "$warnings"
    cat "$warnings_file"
fi
if ((status != 0)); then
    exit "$status"
fi
if ((warnings > 0)); then
    exit 1
fi
printf '==> documentation built without warnings: %s\n' "$DOCS_SCRATCH_PATH/plugins/Swift-DocC/outputs"
if ((integrations)); then
    printf '    and %s/integrations/<package>/plugins/Swift-DocC/outputs\n' "$DOCS_SCRATCH_PATH"
fi
