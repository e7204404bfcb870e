# Shared helpers for hack/ scripts. Source it: `. "$(dirname "$0")/lib.sh"`.

# Installs Debian packages that are not installed yet (one apt-get update, only if needed).
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The repository root.
repo_root() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd
}
