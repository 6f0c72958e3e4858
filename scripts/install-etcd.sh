#!/usr/bin/env bash
# Installs etcd (needed by the tests that run a real kube-apiserver) from the Debian package
# etcd-server when no etcd is on PATH. Idempotent: does nothing when etcd is already there.
# The package's service is not wanted: tests start their own etcd on ephemeral ports.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
  exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-etcd: etcd is missing and not root (no sudo); install the Debian package etcd-server" >&2; exit 1; }
  sudo="sudo"
fi

# policy-rc.d 101 keeps dpkg from starting the packaged etcd service on machines with an init system.
export DEBIAN_FRONTEND=noninteractive
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
command -v etcd >/dev/null 2>&1 || { echo "install-etcd: etcd-server installed but etcd is not on PATH" >&2; exit 1; }
