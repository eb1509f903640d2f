#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: system packages, Python deps,
# the C extension build, then pytest. Safe to re-run; installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -e /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  echo "== apt-get install ${need[*]}"
  $SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null; }
fi

echo "== pip install -e '.[test]'"
python3 -m pip install -q -e '.[test]'

echo "== pytest"
exec python3 -m pytest -q -p no:cacheprovider "$@" tests
