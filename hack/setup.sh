#!/usr/bin/env bash
# Installs what building and running Caravan needs on a fresh Debian machine.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
# protoc: etcd-client compiles etcd's protobufs at build time.
apt_install protobuf-compiler pkg-config
command -v cargo >/dev/null || { echo "Rust is required: https://rustup.rs" >&2; exit 1; }
