#!/usr/bin/env bash
# The whole test command, for a fresh Debian machine and for CI: installs what the tests need,
# starts etcd, checks formatting and lints, and runs every test against the real parts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
hack/setup-test.sh

# A real etcd for the store conformance suite, on a free port, stopped on exit.
etcd_dir="$(mktemp -d)"
trap 'hack/start-etcd.sh --stop "$etcd_dir" >/dev/null 2>&1 || true; rm -rf "$etcd_dir"' EXIT
CARAVAN_TEST_ETCD="$(hack/start-etcd.sh "$etcd_dir")"
export CARAVAN_TEST_ETCD
echo "==> etcd at $CARAVAN_TEST_ETCD"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo nextest"
cargo nextest run --workspace --locked --no-fail-fast
