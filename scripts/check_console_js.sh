#!/usr/bin/env bash
# Type-check the console's JavaScript (api/static/console: ES modules with `// @ts-check` and JSDoc types) with
# TypeScript's tsc, writing nothing (tsconfig.json: allowJs, checkJs, noEmit, strict). The vendored files
# (api/static/vendor) are not checked.
#
# Which tsc: $TSC if set; else the one on PATH; else Debian's node-typescript, installed with apt-get where this
# runs as root (as .ci/run installs chromium); else npm's typescript (the version checked here) in var/typescript.
set -euo pipefail
cd "$(dirname "$0")/.."

NPM_TYPESCRIPT=typescript@7.0.2
LOCAL=var/typescript/node_modules/.bin/tsc

tsc_found() { TSC=${TSC:-$(command -v tsc || true)}; [ -n "$TSC" ] || { [ -x "$LOCAL" ] && TSC=$LOCAL; }; [ -n "${TSC:-}" ]; }

if ! tsc_found && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing TypeScript (Debian's node-typescript) for the console's type check"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq node-typescript; } >/dev/null 2>&1 \
    || echo "apt-get could not install node-typescript" >&2
fi
if ! tsc_found && command -v npm >/dev/null 2>&1; then
  echo "installing TypeScript ($NPM_TYPESCRIPT, npm) into var/typescript for the console's type check"
  npm install --no-save --no-audit --no-fund --silent --prefix var/typescript "$NPM_TYPESCRIPT" >&2 \
    || echo "npm could not install $NPM_TYPESCRIPT" >&2
fi
if ! tsc_found; then
  echo "no tsc: install TypeScript (apt-get install node-typescript, or npm install -g typescript) to type-check" \
    "the console's JavaScript" >&2
  exit 1
fi
echo "$TSC -p tsconfig.json ($("$TSC" --version))"
exec "$TSC" -p tsconfig.json
