# Sourced by the scripts: installs Debian packages (idempotent), with sudo when not root.
# Usage: ensure_packages COMMAND:PACKAGE ...   (installs each PACKAGE whose COMMAND is missing)
#        install_packages PACKAGE ...
install_packages() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
  # Debian's docker-registry package also starts a system service: an open registry on :5000 of every
  # interface. The tests and the demo start their own on 127.0.0.1, so one installed here is stopped.
  if [[ " $* " == *" docker-registry "* ]] && [ -d /run/systemd/system ]; then
    echo "stopping and disabling the docker-registry system service the package started (the tests start their own)"
    $sudo systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
}

ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    install_packages "${missing[@]}"
  fi
}
