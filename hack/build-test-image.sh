#!/usr/bin/env bash
# Builds the test images from Debian's static busybox, with no registry involved:
#   caravan/busybox:test   FROM scratch + /bin/busybox, every applet symlinked in /bin
#   caravan/demo-web:v1    busybox httpd on $PORT (8080) serving "demo-web <VERSION> on <hostname>"
#   caravan/demo-web:v2    the same, VERSION=v2
# Idempotent: each image carries a hash of its inputs as a label, and an image whose label matches
# is not rebuilt (a second run takes well under a second). `--force` rebuilds anyway.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
root="$(repo_root)"
force=0
[ "${1:-}" = "--force" ] && force=1

command -v docker >/dev/null || { echo "build-test-image: docker is not installed" >&2; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
  echo "build-test-image: the Docker daemon does not answer (is it running? is \$DOCKER_HOST right?)" >&2
  exit 1
}
# Debian's busybox-static: a static binary, so it runs in an image with no libc.
applets="$( [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null || true)"
if ! grep -qx httpd <<<"$applets"; then
  apt_install busybox-static
  applets="$(/bin/busybox --list 2>/dev/null || true)"
fi
grep -qx httpd <<<"$applets" || { echo "build-test-image: /bin/busybox has no httpd applet" >&2; exit 1; }
case "$(file -L /bin/busybox 2>/dev/null || echo static)" in
  *dynamically*) echo "build-test-image: /bin/busybox is dynamically linked; install busybox-static" >&2; exit 1 ;;
esac

# One build at a time (test processes run this concurrently); the others then find it done.
exec 9>"${TMPDIR:-/tmp}/caravan-build-test-image.lock"
flock 9

images_dir="$root/testdata/images"
busybox_sum="$(sha256sum /bin/busybox | cut -c1-64)"

# inputs_hash DIR EXTRA... — a hash of a build context's files, the busybox binary and extra words.
inputs_hash() {
  local dir="$1"
  shift
  { (cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum); echo "$busybox_sum $*"; } |
    sha256sum | cut -c1-64
}

# current TAG — the input hash an existing image carries, or nothing.
current() {
  docker image inspect --format '{{ index .Config.Labels "com.caravan.test-image.hash" }}' "$1" 2>/dev/null || true
}

# build TAG DIR HASH [docker build args...]
build() {
  local tag="$1" dir="$2" hash="$3"
  shift 3
  if [ "$force" -eq 0 ] && [ "$(current "$tag")" = "$hash" ]; then
    echo "==> $tag is up to date"
    return 0
  fi
  echo "==> building $tag"
  local ctx status=0
  ctx="$(mktemp -d)"
  cp -R "$dir/." "$ctx/"
  cp /bin/busybox "$ctx/busybox"
  # The legacy builder needs no buildx plugin and no registry for FROM scratch / local bases.
  DOCKER_BUILDKIT=0 docker build -q --label "com.caravan.test-image.hash=$hash" -t "$tag" "$@" "$ctx" \
    >/dev/null 2>"$ctx/build.log" || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$ctx/build.log" >&2
    echo "build-test-image: building $tag failed" >&2
  fi
  rm -rf "$ctx"
  return "$status"
}

busybox_hash="$(inputs_hash "$images_dir/busybox")"
build caravan/busybox:test "$images_dir/busybox" "$busybox_hash"
for version in v1 v2; do
  # The base image's hash is part of the input, so a rebuilt base rebuilds the web images.
  build "caravan/demo-web:$version" "$images_dir/demo-web" \
    "$(inputs_hash "$images_dir/demo-web" "$busybox_hash" "$version")" --build-arg "VERSION=$version"
done
