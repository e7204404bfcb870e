#!/usr/bin/env bash
# Node agent benchmark: a real `caravan agent -dev` (release build) runs a raw_exec job of N
# allocations for N in 1, 10, 100 (benches/agent.rs). Per N: seconds from register to every
# allocation reported running (followed through the API with blocking queries), and resident
# memory per allocation — (agent RSS + RSS of every non-task process the agent spawned, once all
# run, minus the agent's RSS before) / N, read from /proc. The job is stopped between runs.
#
#   hack/bench-agent.sh [--counts 1,10,100] [--dir DIR]
#
# The last line reads: allocs=100 all_running_s=<s> rss_per_alloc_kb=<k>
# Reference: a Nomad client runs an executor and a logmon process per raw_exec/exec task,
# ~10-25 MB RSS each since 0.9.6 (hashicorp/nomad#6543); no published figure for the time to
# all allocations running.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

echo "==> building the agent and the benchmark (release)" >&2
cargo build --release --bin caravan >&2
cargo bench --bench agent --no-run >&2

cargo bench --bench agent -- "$@"
