#!/usr/bin/env bash
# Builds the web console into ui/dist, which kumo-apiserver embeds at compile time (so build kumo after this):
# installs the pinned npm packages (xterm.js, noVNC, and playwright-core for the browser test), then lays out
# kumo's own page and script beside the packages' browser files. No bundler: the page loads ES modules.
set -euo pipefail
cd "$(dirname "$0")/../ui"
if ! command -v npm >/dev/null; then
  echo "build-ui: installing nodejs and npm (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
echo "build-ui: npm ci"
npm ci --no-audit --no-fund --loglevel=error
rm -rf dist.new && mkdir -p dist.new/vendor/xterm dist.new/vendor/novnc
cp src/* dist.new/
cp node_modules/@xterm/xterm/lib/xterm.mjs node_modules/@xterm/xterm/css/xterm.css dist.new/vendor/xterm/
cp -r node_modules/@novnc/novnc/core node_modules/@novnc/novnc/vendor dist.new/vendor/novnc/
cp node_modules/@xterm/xterm/LICENSE dist.new/vendor/xterm/LICENSE
cp node_modules/@novnc/novnc/LICENSE.txt dist.new/vendor/novnc/LICENSE.txt
rm -rf dist && mv dist.new dist
echo "build-ui: ui/dist ($(find dist -type f | wc -l) files, $(du -sh dist | cut -f1))"
