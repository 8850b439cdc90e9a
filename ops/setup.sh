#!/usr/bin/env bash
# Installs what building and testing Tally needs on a Debian machine, when missing.
# Safe to re-run: it installs only absent packages and tools.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# fio, fonts-dejavu-core and python3-venv: the peer comparison (benches/compare: disk limits,
# plot text, the NATS server's virtual environment). chromium: the status-page test renders
# the admin port's page headless (fonts-dejavu-core gives it its text).
for pkg in clang libclang-dev protobuf-compiler etcd-server etcd-client fio fonts-dejavu-core python3-venv chromium; do
  have_pkg "$pkg" || need+=("$pkg")
done

if [ "${#need[@]}" -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
else
  echo "setup: system packages present"
fi

# The test runner; the project machine ships it, a fresh one may not.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# QUIC carries all of a node's connections on one UDP socket: let it have 8 MiB of kernel
# buffer each way (transport/endpoint.rs asks for it; the kernel caps it at these limits, and
# bursts beyond Linux's 208 KiB default are dropped and retransmitted). Best effort: a
# container may not allow it, and nodes still work, with more loss under load.
want=8388608
for key in net.core.rmem_max net.core.wmem_max; do
  have=$(sysctl -n "$key" 2>/dev/null || echo "$want")
  if [ "$have" -lt "$want" ]; then
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo -n); fi
    "${sudo_cmd[@]}" sysctl -q -w "$key=$want" 2>/dev/null ||
      echo "setup: could not raise $key to $want (now $have); see docs/OPERATIONS.md" >&2
  fi
done

for tool in etcd etcdctl protoc clang fio python3 chromium; do
  command -v "$tool" >/dev/null || { echo "setup: $tool still missing" >&2; exit 1; }
done
echo "setup: done"
