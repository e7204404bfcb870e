#!/usr/bin/env bash
# C1M-style scheduler benchmark through the real server, HTTP API and store.
#
#   hack/bench-scheduler.sh --jobs J --count C --nodes N --store embedded|etcd
#
# With --store etcd a private etcd is started on a free port (temporary data dir, stopped on
# exit). The last line reads:
#   placed=<n> nodes=<n> store=<kind> seconds=<s> placements_per_s=<r> p99_job_placed_ms=<t>
# Reference: Nomad's C1M placed 1,000,000 containers (1,000 jobs x 1,000) on 5,000 hosts in under
# 5 minutes (3,750 placements/s) with five servers.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

store=embedded
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--store" ]; then j=$((i + 1)); store="${!j}"; fi
done

echo "==> building the benchmark (release)" >&2
cargo bench --bench scheduler --no-run >&2

work="$(mktemp -d -t caravan-bench-sched.XXXXXX)"
trap 'hack/start-etcd.sh --stop "$work/etcd" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
extra=()
if [ "$store" = "etcd" ]; then
  endpoint="$(hack/start-etcd.sh "$work/etcd")"
  echo "==> etcd at $endpoint" >&2
  extra=(--etcd "$endpoint")
fi
cargo bench --bench scheduler -- --dir "$work" "${extra[@]}" "$@"
