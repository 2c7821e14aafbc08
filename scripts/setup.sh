#!/usr/bin/env bash
# Idempotent set-up: system packages the tests need, the Python virtualenv, Node packages for the MicroPython tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# mosquitto: the real MQTT broker the uplink tests start; socat: serial/pty plumbing; nodejs+npm: MicroPython (wasm)
# under Node for the agent core's tests; openssl: test CAs; python3-venv: Debian splits venv out of python3.
need_pkgs=()
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v socat >/dev/null 2>&1 || need_pkgs+=(socat)
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_pkgs+=(python3-venv)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian starts a system-wide broker on install where systemd runs; the tests start their own on free ports.

python3 - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: chargegate needs Python >= 3.11, this is {sys.version.split()[0]}")
PY

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.chargegate-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing chargegate and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[dev,nfc]'
  touch "$stamp"
fi

if [ -f package-lock.json ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    echo "setup: installing Node packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error
    touch node_modules
  fi
fi
