#!/usr/bin/env bash
# Installs promtool and prometheus (Debian package `prometheus`) for the
# metrics tests (cradle-server/tests/metrics.rs): `promtool check metrics` on
# a real scrape, and a Prometheus server that scrapes the endpoint on
# loopback. Nothing to do when both are already on PATH.
set -euo pipefail
if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  echo "prometheus: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: installing the prometheus package needs root (apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The package's service is not started: policy-rc.d or no init keeps it down,
# and the tests start their own server on a free loopback port.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null
command -v prometheus >/dev/null
echo "prometheus: $(prometheus --version 2>&1 | head -1)"
