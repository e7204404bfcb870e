#!/bin/sh
# Serves a page naming this service's version and the host it runs on, until stopped.
root=/tmp/www
port="${PORT:-8080}"
mkdir -p "$root"
host="$(hostname)"
echo "demo-web ${VERSION} on ${host}" > "$root/index.html"
echo "ok" > "$root/health"
echo "demo-web ${VERSION} listening on :${port} as ${host}"
# As PID 1 the shell gets only the signals it traps, so trap the usual stop signals, pass them on to
# httpd and exit promptly (a plain `exec httpd` would ignore SIGTERM and wait for the kill timeout).
httpd -f -v -p "$port" -h "$root" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo "demo-web ${VERSION} stopped"; exit 0' TERM INT
wait "$pid"
