#!/usr/bin/env bash
# What tests/producer_snippets.rs runs the README's producer snippets with:
# pika (examples/requirements.txt) in the virtualenv target/ci-venv, and
# amqplib (examples/package.json) in examples/node_modules. Installs only
# what is missing or at another version; needs python3 and node with npm.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=target/ci-venv
command -v node >/dev/null || { echo "snippets: node is not installed (Debian: apt-get install nodejs npm)" >&2; exit 1; }
command -v npm >/dev/null || { echo "snippets: npm is not installed (Debian: apt-get install npm)" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
pika_wanted=$(sed -n 's/^pika==//p' examples/requirements.txt)
pika_have=$("$VENV/bin/python" -c 'import pika; print(pika.__version__)' 2>/dev/null || true)
if [ "$pika_have" != "$pika_wanted" ]; then
  echo "snippets: installing pika $pika_wanted into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r examples/requirements.txt
fi

amqplib_wanted=$(node -p 'require("./examples/package.json").dependencies.amqplib')
amqplib_have=$(node -p 'require("./examples/node_modules/amqplib/package.json").version' 2>/dev/null || true)
if [ "$amqplib_have" != "$amqplib_wanted" ]; then
  echo "snippets: installing amqplib $amqplib_wanted into examples/node_modules"
  if [ -f examples/package-lock.json ]; then
    npm ci --prefix examples --no-audit --no-fund
  else
    npm install --prefix examples --no-audit --no-fund
  fi
fi

echo "snippets: $("$VENV/bin/python" --version), pika $("$VENV/bin/python" -c 'import pika; print(pika.__version__)'); node $(node --version), amqplib $(node -p 'require("./examples/node_modules/amqplib/package.json").version')"
