#!/usr/bin/env bash
# Installs what the test suite needs on top of hack/setup.sh: a real etcd for the store
# conformance suite, busybox for test tasks and images, curl for the CLI tests' API reads.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
"$(dirname "$0")/setup.sh"
apt_install etcd-server busybox-static curl
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# python-nomad, the Nomad API client the compatibility test drives unchanged.
python3 -c 'import nomad' 2>/dev/null || python3 -m pip install --quiet python-nomad==2.1.0
