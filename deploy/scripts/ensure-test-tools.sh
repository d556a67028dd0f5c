#!/usr/bin/env bash
# Make sure the command-line tools the tests drive are installed: ipmitool (talks to the
# simulated BMCs, tests/sim), nft (drops heartbeat packets, tests/host) and Debian's chromium
# (the dashboard's browser tests drive it headless; Playwright never downloads one). Idempotent: does nothing when every tool is already there, and
# runs `apt-get update` only when the package is not known to apt yet. Used by `make test`.
set -euo pipefail

missing=()
command -v ipmitool >/dev/null || missing+=(ipmitool)
command -v nft >/dev/null || missing+=(nftables)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "need root to install ${missing[*]}; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
for pkg in "${missing[@]}"; do
  # A fresh machine has empty package lists: update once, only then.
  if ! apt-cache show "$pkg" >/dev/null 2>&1; then
    echo "apt-get update (package lists do not know $pkg yet) ..."
    apt-get update -qq
    break
  fi
done
echo "installing ${missing[*]} (Debian packages) ..."
log=$(mktemp)
apt-get install -y -qq "${missing[@]}" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
command -v ipmitool >/dev/null && command -v nft >/dev/null && [ -x /usr/bin/chromium ]
