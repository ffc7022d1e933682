#!/usr/bin/env bash
# Install Aether Box into a virtual environment in this checkout (.venv), installing first the
# few system packages a stock Debian or Ubuntu lacks. Safe to run again: it only does what is
# missing. Usage: scripts/install.sh [EXTRAS]   e.g. scripts/install.sh test,build
#
# Why each system package (asked for with sudo, and only when missing):
#   python3-venv     Debian splits `venv`/`ensurepip` out of Python; the system pip refuses to
#                    install into the system Python (PEP 668), so the box gets its own venv.
#   build-essential  a C/C++ compiler: llama-cpp-python compiles llama.cpp on first install
#                    (about 5 minutes on 2 cores; pip caches the wheel for later installs).
#   python3-dev      brings libpython3.X.so, which PyInstaller needs to build the executable.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-}

need=()
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v c++ >/dev/null 2>&1 && command -v cc >/dev/null 2>&1 || need+=(build-essential)
python3 - <<'PY' 2>/dev/null || need+=(python3-dev)
import pathlib, sys, sysconfig
# A shared libpython (what PyInstaller bundles), in the places Debian, Ubuntu and pyenv put it.
name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
dirs = {sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LIBPL") or ""}
dirs |= {"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"}
sys.exit(0 if any(name and (pathlib.Path(d) / name).exists() for d in dirs if d) else 1)
PY

if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install: this machine lacks ${need[*]} (Debian/Ubuntu names); install their" \
      "equivalents with your package manager, then run this again" >&2
    exit 1
  fi
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_=sudo
  echo "install: installing system packages ${need[*]} (see scripts/install.sh for why)"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}"
fi

# llama-cpp-python compiles llama.cpp: on every core, and without the multimodal (mtmd)
# library, which the box does not use (a variable you set yourself wins).
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
echo "install: installing aether-box${extras:+[$extras]} into .venv" \
  "(the first install compiles llama-cpp-python: about 5 minutes)"
.venv/bin/python -m pip install --progress-bar off -e ".${extras:+[$extras]}"
