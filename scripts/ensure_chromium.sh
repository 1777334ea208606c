#!/usr/bin/env bash
# Make sure headless Chromium is present for the HTML-report test (tests/report). Installs
# Debian's `chromium` package when running as root; otherwise says how, and that test is
# reported as skipped. Never fails the build: the rest of the suite does not need a browser.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Chromium: installing Debian package chromium (for the HTML-report test)"
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
  echo "Chromium: apt-get install chromium failed" >&2
fi
echo "Chromium not found: the HTML-report test will be skipped." \
  "To run it: sudo apt-get update && sudo apt-get install chromium" >&2
exit 0
