#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (root only; others install it themselves or skip those tests).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: /usr/bin/chromium is missing and this is not a root Debian shell; browser tests will be skipped."
  echo "                 Install Debian's 'chromium' package to run them."
  exit 0
fi
echo "install-browser: apt-get install chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
