#!/usr/bin/env bash
# Build in release mode and run the demo; extra arguments go to
# `session-cluster demo` (e.g. scripts/demo.sh --port 8099).
# SCRATCH_PATH (default .build) is SwiftPM's build directory.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$script_dir/.."

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$script_dir/ensure-packages.sh"

SCRATCH_PATH=${SCRATCH_PATH:-.build}

echo "==> checking packages and Swift"
ensure_packages libhiredis-dev curl
ensure_swift

echo "==> building session-cluster (release, scratch path $SCRATCH_PATH)"
swift build -c release --product session-cluster --scratch-path "$SCRATCH_PATH"

echo "==> starting the demo"
exec "$SCRATCH_PATH/release/session-cluster" demo "$@"
