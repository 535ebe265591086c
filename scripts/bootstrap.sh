#!/usr/bin/env bash
# Install what tether's build, demo and tests need on a Debian machine (run as root).
# Idempotent and quick when everything is present: apt runs only for missing packages.
set -euo pipefail
PKGS=(build-essential python3-venv python3-dev iproute2 nftables libnftables1 dnsmasq-base
      postgresql golang-go golang-github-lib-pq-dev gdb curl procps util-linux)
PKGS+=(delve ruby openjdk-17-jdk-headless)  # the runtime scenes: Go under Delve, Ruby, the JVM
PKGS+=(nginx wrk)  # make bench: the target's app and the load generator (bench/incoming.py)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v node >/dev/null 2>&1 || missing+=(nodejs)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
    echo "bootstrap: run as root (tether's demo and tests create network namespaces anyway)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
