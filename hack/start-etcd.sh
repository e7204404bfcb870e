#!/usr/bin/env bash
# Starts a throwaway etcd on a free 127.0.0.1 port and prints its endpoint (host:port).
#
#   hack/start-etcd.sh [DIR]        start; DIR (default: a new temp dir) holds data/, etcd.log,
#                                   etcd.pid and endpoint; prints 127.0.0.1:<port> on stdout
#   hack/start-etcd.sh --stop DIR   stop the etcd started in DIR
#
# CARAVAN_ETCD_QUOTA_BYTES raises etcd's backend quota (default 2 GiB, etcd's own default).
# Example: CARAVAN_TEST_ETCD="$(hack/start-etcd.sh /tmp/etcd)" cargo nextest run --test store_conformance
# etcd keeps running in the background until stopped; it never holds this script's stdout.
set -euo pipefail

die() { echo "start-etcd: $*" >&2; exit 1; }

stop() {
  local dir="$1" pid
  [ -f "$dir/etcd.pid" ] || die "no etcd.pid in $dir"
  pid="$(cat "$dir/etcd.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$dir/etcd.pid"
  echo "stopped etcd $pid" >&2
}

# Whether something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
  local port
  for _ in $(seq 1 100); do
    port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
    listening "$port" || { echo "$port"; return 0; }
  done
  die "no free port found"
}

healthy() {
  local reply
  reply="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && timeout 2 cat <&3) 2>/dev/null || true)"
  [[ "$reply" == *'"health":"true"'* ]]
}

if [ "${1:-}" = "--stop" ]; then
  [ -n "${2:-}" ] || die "usage: $0 --stop DIR"
  stop "$2"
  exit 0
fi

etcd_bin="${CARAVAN_ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"
[ -x "$etcd_bin" ] || die "etcd is not installed ($etcd_bin): run hack/setup-test.sh (installs Debian's etcd-server)"

dir="${1:-$(mktemp -d -t caravan-etcd.XXXXXX)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ -f "$dir/etcd.pid" ] && kill -0 "$(cat "$dir/etcd.pid")" 2>/dev/null; then
  die "an etcd started from $dir is still running (pid $(cat "$dir/etcd.pid")); stop it with $0 --stop $dir"
fi

for attempt in 1 2 3 4 5; do
  client="$(free_port)"
  peer="$(free_port)"
  [ "$client" != "$peer" ] || continue
  setsid "$etcd_bin" \
    --name caravan \
    --data-dir "$dir/data" \
    --listen-client-urls "http://127.0.0.1:$client" \
    --advertise-client-urls "http://127.0.0.1:$client" \
    --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "caravan=http://127.0.0.1:$peer" \
    --logger zap --log-outputs stderr \
    --quota-backend-bytes "${CARAVAN_ETCD_QUOTA_BYTES:-2147483648}" \
    </dev/null >>"$dir/etcd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/etcd.pid"
  # Wait (bounded) until etcd answers, or exits (e.g. the port was taken meanwhile).
  for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "start-etcd: etcd exited (attempt $attempt), retrying on other ports; see $dir/etcd.log" >&2
      rm -f "$dir/etcd.pid"
      continue 2
    fi
    if healthy "$client"; then
      echo "127.0.0.1:$client" >"$dir/endpoint"
      echo "started etcd $pid at 127.0.0.1:$client (data and log in $dir)" >&2
      echo "127.0.0.1:$client"
      exit 0
    fi
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/etcd.pid"
  die "etcd did not become healthy within 30s; see $dir/etcd.log"
done
die "etcd failed to start; see $dir/etcd.log"
