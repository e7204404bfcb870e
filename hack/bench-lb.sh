#!/usr/bin/env bash
# Load balancer benchmark: `caravan lb` (release build, -routes FILE) and Debian's nginx as a
# reverse proxy (proxy_pass to an upstream block with keepalive) in front of the same upstream —
# an nginx serving a small static file — on this machine, each loaded with the same
# `wrk -t2 -c50 -d10s --latency`, one after the other in one run (after a short warm-up each).
#
#   hack/bench-lb.sh [--duration 10s] [--connections 50] [--threads 2]
#
# Both proxies get the same work: keep-alive to clients and to the upstream, X-Forwarded-For,
# -Proto and -Host set, no access log. nginx runs `worker_processes auto` (one per core), caravan
# lb one tokio worker per core. The upstream alone is measured too, for reference (stderr).
#
# The last line reads:
#   lb_rps=<r> nginx_rps=<r> ratio=<lb/nginx> lb_p99_ms=<t> nginx_p99_ms=<t>
# Goal: ratio >= 0.8 and lb_p99_ms within 1 ms of nginx_p99_ms.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. hack/lib.sh

duration=10s
connections=50
threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

apt_install nginx wrk
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

echo "==> building caravan (release)" >&2
cargo build --release --bin caravan >&2
caravan="$root/target/release/caravan"

work="$(mktemp -d /tmp/bench-lb.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until something accepts connections on 127.0.0.1:$1.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1 after 10 s" >&2
  return 1
}

up_port="$(free_port)"
ngx_port="$(free_port)"
lb_port="$(free_port)"
ui_port="$(free_port)"

# --- the upstream: nginx serving a small static file ---------------------------------------
mkdir -p "$work/www" "$work/up" "$work/ngx"
printf 'hello from the upstream, a small static file of about one hundred bytes for the benchmark.\n' \
  >"$work/www/index.html"
common_http='
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path %DIR%/client_body;
  proxy_temp_path %DIR%/proxy;
  fastcgi_temp_path %DIR%/fastcgi;
  uwsgi_temp_path %DIR%/uwsgi;
  scgi_temp_path %DIR%/scgi;
'
cat >"$work/up/nginx.conf" <<EOF
worker_processes 1;
user root;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 4096; }
http {
  ${common_http//%DIR%/$work/up}
  server {
    listen 127.0.0.1:$up_port;
    root $work/www;
  }
}
EOF
"$nginx_bin" -p "$work/up" -c "$work/up/nginx.conf" -g 'daemon off;' &
pids+=($!)

# --- nginx as the reverse proxy -------------------------------------------------------------
cat >"$work/ngx/nginx.conf" <<EOF
worker_processes auto;
user root;
pid $work/ngx/nginx.pid;
error_log $work/ngx/error.log warn;
events { worker_connections 4096; }
http {
  ${common_http//%DIR%/$work/ngx}
  upstream app {
    server 127.0.0.1:$up_port;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$ngx_port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;
    }
  }
}
EOF
"$nginx_bin" -p "$work/ngx" -c "$work/ngx/nginx.conf" -g 'daemon off;' &
pids+=($!)

# --- caravan lb -----------------------------------------------------------------------------
cat >"$work/routes.json" <<EOF
{"Routes": [{"Host": "", "Prefix": "/", "Service": "bench", "Proto": "http",
  "Backends": [{"Weight": 100, "Subset": "", "Instances": [
    {"Address": "127.0.0.1", "Port": $up_port, "AllocID": "", "JobVersion": 0, "Canary": false}]}]}],
 "ModifyIndex": 1}
EOF
CARAVAN_LOG=warn "$caravan" lb -addr "127.0.0.1:$lb_port" -ui-addr "127.0.0.1:$ui_port" \
  -routes "$work/routes.json" >"$work/lb.out" 2>"$work/lb.err" &
pids+=($!)

wait_port "$up_port"
wait_port "$ngx_port"
wait_port "$lb_port"
for port in "$up_port" "$ngx_port" "$lb_port"; do
  if ! curl -fsS "http://127.0.0.1:$port/index.html" | grep -q "hello from the upstream"; then
    echo "127.0.0.1:$port does not serve the file" >&2
    exit 1
  fi
done

# Runs wrk against a port; prints its report to stderr and "<rps> <p99_ms>" to stdout.
measure() {
  local name="$1" port="$2" out
  wrk -t"$threads" -c"$connections" -d2s "http://127.0.0.1:$port/index.html" >/dev/null
  out="$(wrk -t"$threads" -c"$connections" -d"$duration" --latency "http://127.0.0.1:$port/index.html")"
  {
    echo "==> $name (127.0.0.1:$port)"
    echo "$out"
  } >&2
  if echo "$out" | grep -qE 'Non-2xx|Socket errors'; then
    echo "    ($name had errors, see above)" >&2
  fi
  local rps p99
  rps="$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')"
  p99="$(echo "$out" | awk '$1 == "99%" {
      v = $2
      if (v ~ /us$/) { sub(/us$/, "", v); v = v / 1000 }
      else if (v ~ /ms$/) { sub(/ms$/, "", v) }
      else if (v ~ /s$/) { sub(/s$/, "", v); v = v * 1000 }
      printf "%.3f", v }')"
  echo "$rps $p99"
}

read -r up_rps up_p99 < <(measure "upstream alone (nginx, static file)" "$up_port")
read -r lb_rps lb_p99 < <(measure "caravan lb" "$lb_port")
read -r ngx_rps ngx_p99 < <(measure "nginx reverse proxy" "$ngx_port")

echo "upstream_alone_rps=$up_rps upstream_alone_p99_ms=$up_p99" >&2
ratio="$(awk -v a="$lb_rps" -v b="$ngx_rps" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }')"
printf 'lb_rps=%.0f nginx_rps=%.0f ratio=%s lb_p99_ms=%s nginx_p99_ms=%s\n' \
  "$lb_rps" "$ngx_rps" "$ratio" "$lb_p99" "$ngx_p99"
