#!/usr/bin/env bash
# Install Debian's headless Chromium (browser tests, workflow thumbnails) when it is missing, with an
# emoji font: the webui draws its buttons (refresh, …) as emoji.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'color emoji' && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[CPSample] chromium or its emoji font is missing and cannot be installed here (needs root and apt-get); browser tests will fail" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium fonts-noto-color-emoji >/dev/null
