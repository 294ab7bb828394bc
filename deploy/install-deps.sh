#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages colex needs at run time and in its
# tests: a static busybox for the built-in image, iptables, iproute2 and
# nsenter, and tcpdump for the mesh capture test. Packages already present
# are left alone.
set -euo pipefail

packages=(busybox-static iptables iproute2 util-linux curl tcpdump)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
