#!/usr/bin/env bash
# Runs the whole colex test suite: unit tests, root tests of the silo
# runtime, and multi-host cluster tests in lab network namespaces.
# Run as root; without root the root tests are skipped (and fail when CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

# boringtun, the agents' userspace WireGuard, creates this folder for its control sockets and
# leaves it behind when the last socket closes. The tests remove it again when they created it
# and it is empty, so a leftover socket still shows.
wireguard_socket_dir=/var/run/wireguard
if [ -e "$wireguard_socket_dir" ]; then
    remove_socket_dir=false
else
    remove_socket_dir=true
fi
remove_created_socket_dir() {
    if [ "$remove_socket_dir" = true ] && [ -d "$wireguard_socket_dir" ]; then
        rmdir "$wireguard_socket_dir" || echo "test.sh: $wireguard_socket_dir is not empty; a WireGuard socket was left" >&2
    fi
}
trap remove_created_socket_dir EXIT

./deploy/install-deps.sh
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
