#!/usr/bin/env bash
# Screenshot an HTML report with headless Chromium (Debian package `chromium`), and check in
# the rendered page that every embedded plot decoded (the report marks <body data-plots="n/m">).
#
#   scripts/screenshot_report.sh REPORT.html OUT.png [HEIGHT]
#
# Exit status: 0 when every plot rendered, 1 when one did not, 2 when Chromium is missing.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [HEIGHT]" >&2
  exit 64
fi
html="$(realpath "$1")"
out="$(realpath -m "$2")"
height="${3:-6000}"
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "chromium not found: as root, apt-get update && apt-get install -y chromium" >&2
  exit 2
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
       --disable-background-networking --disable-component-update --disable-sync
       --user-data-dir="$profile" --hide-scrollbars --virtual-time-budget=5000)
log="$profile/chromium.log"
if ! "$browser" "${flags[@]}" --screenshot="$out" --window-size="1280,$height" \
  "file://$html" >"$log" 2>&1; then
  echo "chromium failed to screenshot $html; its output:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
if [ ! -s "$out" ]; then
  echo "no screenshot written to $out" >&2
  exit 1
fi
if ! dom="$("$browser" "${flags[@]}" --dump-dom "file://$html" 2>"$log")"; then
  echo "chromium failed to render $html; its output:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
# no mark (not a deepzip report) leaves status empty: reported as unknown below, exit 1
status="$(printf '%s' "$dom" | grep -o 'data-plots="[0-9]*/[0-9]*"' | head -n1 | tr -dc '0-9/' \
  || true)"
echo "screenshot: $out; plots rendered: ${status:-unknown}"
rendered="${status%/*}"
total="${status#*/}"
if [ -z "$status" ] || [ "$rendered" != "$total" ]; then
  exit 1
fi
