# Shared by deploy/*.sh. Not executable on its own.

# ensure_packages BINARY:PACKAGE ... — apt-get install the packages whose binary is missing
# from PATH and /usr/sbin. Does nothing (and needs no network) when everything is there.
ensure_packages() {
  local missing=() pair bin pkg
  for pair in "$@"; do
    bin=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
      missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing missing packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  # A policy-rc.d keeps Debian from starting the packaged daemons (we start our own).
  local policy=/usr/sbin/policy-rc.d created=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -n "$created" ] && $sudo rm -f "$policy"
  return 0
}
