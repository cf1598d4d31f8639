#!/usr/bin/env bash
# Installs what qtrain needs to build and test on Debian/Ubuntu: compilers and libraries
# from apt, and the Python packages used only as test oracles (never at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
pkgs="build-essential cmake pkg-config libhdf5-dev libyaml-dev libcjson-dev libpcre2-dev python3 python3-pip"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi
# Test oracles from PyPI. A Debian system python refuses global installs (PEP 668): then
# use a virtual environment that the test script picks up.
if python3 -m pip install -q -r tests/requirements.txt 2>/dev/null; then
  :
else
  python3 -m venv .venv && .venv/bin/python -m pip install -q -r tests/requirements.txt
fi
