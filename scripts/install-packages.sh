#!/usr/bin/env bash
# Installs the Debian packages the tests run, those of them that are missing (idempotent). With
# no arguments: what the one-node test cluster (tools/kubecluster) runs: etcd, containerd, runc,
# the CNI plugins (bridge, host-local, loopback) and nft (kube-proxy's nftables mode and the
# harness's teardown check). With arguments: only those packages (`etcd-server` for the tests
# that run a bare kube-apiserver). The packaged services are not wanted: the tests start their
# own etcd and containerd with their own configs and temp dirs.
set -euo pipefail

packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(etcd-server containerd runc containernetworking-plugins nftables)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-packages: missing ${missing[*]} and not root (no sudo); run: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi

# policy-rc.d 101 keeps dpkg from starting the packaged etcd and containerd services on machines
# with an init system.
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
