#!/usr/bin/env bash
# Installs Debian's Chromium for the HTML report's browser tests (tests/test_html_report.py),
# only when /usr/bin/chromium is absent: running it twice does nothing the second time.
# Playwright drives this binary through executable_path; `playwright install` is never used.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "install-browser: /usr/bin/chromium is already installed" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
test -x /usr/bin/chromium
