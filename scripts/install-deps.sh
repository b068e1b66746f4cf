#!/usr/bin/env bash
# Install every system and Python dependency pycni's lab, tests and benchmarks need.
# Idempotent and fast the second time: apt is skipped when every package is present,
# pip is skipped when the venv's stamp is newer than pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(etcd-server etcd-client iproute2 iptables iperf3 bird2 gobgpd containernetworking-plugins
          user-mode-linux kmod busybox-static iputils-ping tcpdump ethtool util-linux procps
          python3-venv make)

missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -qq || true
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends "${missing[@]}"
fi

# Names for our route protocol numbers, so `ip route` prints "proto pycni-felix" (not "proto 80").
if [ -d /etc/iproute2 ] && ! cmp -s deploy/rt_protos.d/pycni.conf /etc/iproute2/rt_protos.d/pycni.conf; then
  install -D -m 0644 deploy/rt_protos.d/pycni.conf /etc/iproute2/rt_protos.d/pycni.conf
fi

VENV=${PYCNI_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  # --copies keeps the venv usable by `nobody` (exabgp drops privileges) even when the
  # base interpreter lives under a 0700 home directory.
  "$PY" -m venv --copies "$VENV"
fi
stamp="$VENV/.pycni-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[dev]'
  touch "$stamp"
fi
