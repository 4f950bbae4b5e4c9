#!/usr/bin/env bash
# The ingest endpoint against its own OpenAPI document: schemathesis (PyPI)
# generates requests from openapi/ingest.json and checks every answer is a
# documented status with a documented body, and that no request makes a
# server error. Phases: the document's examples,
# and generated requests; the endpoint has a ledger database of its own. The endpoint runs from the release build, on the local
# broker, under a throwaway queue prefix deleted afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/ci-venv
if [ ! -x "$venv/bin/pip" ]; then
  python3 -m venv "$venv"
fi
if [ ! -x "$venv/bin/st" ]; then
  echo "schemathesis: installing into $venv"
  "$venv/bin/pip" install --quiet "schemathesis==4.32.5" pika==1.4.4
fi

bin=${BW_BIN:-target/release/broadcast-worker}
[ -x "$bin" ] || { echo "schemathesis: $bin is missing: cargo build --release first" >&2; exit 1; }
dir=$(mktemp -d)
prefix="bwtest-schemathesis-$$"
# A database of its own for the endpoint's ledger (idempotency keys, GET).
database="bwtest_schemathesis_$$"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $database" >/dev/null
token="schemathesis-token-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
echo "* $token" >"$dir/tokens"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} \
BROADCAST_QUEUE_PREFIX="$prefix" TIM_SDKAPPID=1400000000 \
BROADCAST_INGEST_ADDR="127.0.0.1:$port" BROADCAST_INGEST_TOKENS_FILE="$dir/tokens" \
BROADCAST_INGEST_REQUESTS_PER_SECOND=100000 DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database" \
  env -u BROADCAST_APPS_FILE "$bin" ingest 2>"$dir/log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  "$venv/bin/python" - "$prefix" <<'PY' || true
import sys, pika
prefix = sys.argv[1]
channel = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f")).channel()
for queue in ("jobs", "urgent", "dead"):
    channel.queue_delete(f"{prefix}.{queue}")
channel.exchange_delete(f"{prefix}.dlx")
PY
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 1 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.2
done

st() {
  "$venv/bin/st" --config-file .ci/schemathesis.toml run "http://127.0.0.1:$port/v1/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --generation-deterministic --wait-for-schema 10 --no-color "$@" \
    || { echo "schemathesis: failed; the endpoint's log:" >&2; tail -20 "$dir/log" >&2; exit 1; }
}
# Every documented example, as documented.
st --phases examples
# Generated requests: the GET by fuzzing; the single POST by the coverage
# phase (boundary and wrong values of each header and field), since the job
# schema's `contains` rule is beyond the fuzzer's generator. The batch's
# coverage phase takes minutes here (bodies of up to 1,000 jobs): its
# examples above and tests/ingest.rs cover it.
st --phases fuzzing --max-examples 25 --include-operation-id getBroadcast
st --phases coverage --include-operation-id postBroadcast
echo "schemathesis: ok"
