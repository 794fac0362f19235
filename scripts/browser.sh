#!/usr/bin/env bash
# Install Debian's Chromium and ChromeDriver for the browser tests where they are missing (needs root and apt).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
else
  echo "chromium/chromedriver missing: browser tests will be skipped" >&2
fi
