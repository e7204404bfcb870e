#!/usr/bin/env bash
# Store benchmark: embedded vs etcd in one run. Builds in release mode, starts a private etcd on a
# free port (temporary data dir, stopped on exit), and runs benches/store.rs against both.
#
#   hack/bench-store.sh [--seconds N]     (extra arguments go to the benchmark binary)
#
# The last line reads: embedded_put_ops=… etcd_put_ops=… embedded_put64_ops=… etcd_put64_ops=…
# embedded_txn100_ops=… etcd_txn100_ops=…
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

echo "==> building the benchmark (release)" >&2
cargo bench --bench store --no-run >&2

# Both stores keep their data under the same temporary directory (same filesystem, same fsync).
work="$(mktemp -d -t caravan-bench.XXXXXX)"
trap 'hack/start-etcd.sh --stop "$work/etcd" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
endpoint="$(hack/start-etcd.sh "$work/etcd")"
echo "==> etcd at $endpoint" >&2

cargo bench --bench store -- --etcd "$endpoint" --dir "$work" "$@"
