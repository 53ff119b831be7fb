#!/usr/bin/env bash
# Build in release mode and run the cluster demo: nodes behind the balancer,
# dashboard at http://127.0.0.1:8080/. Extra arguments go to
# `session-cluster demo` (e.g. scripts/demo.sh --strategy redis --nodes 4).
# SCRATCH_PATH (default .build) is SwiftPM's build directory.
set -euo pipefail

script_dir=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$script_dir/.."

# shellcheck source-path=SCRIPTDIR source=ensure-packages.sh
source "$script_dir/ensure-packages.sh"

SCRATCH_PATH=${SCRATCH_PATH:-.build}

echo "==> checking packages and Swift"
packages=("${build_packages[@]}" curl)
# --strategy redis starts a private redis-server; redis-cluster also needs redis-cli (redis-tools).
if [[ " $* " == *" redis "* || " $* " == *"--strategy=redis"* || " $* " == *" redis-cluster "* ]]; then
    packages+=(redis-server)
fi
if [[ " $* " == *"redis-cluster"* ]]; then
    packages+=(redis-tools)
fi
# --sentinel also starts a private Sentinel (redis-sentinel; redis-server --sentinel would do too).
if [[ " $* " == *" --sentinel "* ]]; then
    packages+=(redis-sentinel)
fi
ensure_packages "${packages[@]}"
ensure_swift

echo "==> building session-cluster (release, scratch path $SCRATCH_PATH)"
swift build -c release --product session-cluster --scratch-path "$SCRATCH_PATH"

echo "==> starting the demo"
exec "$SCRATCH_PATH/release/session-cluster" demo "$@"
