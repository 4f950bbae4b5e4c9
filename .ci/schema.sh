#!/usr/bin/env bash
# The job schema, schema/job.schema.json: checked against its metaschema, then
# against every job the repository shows. README.md's ```json blocks that are
# job bodies and the job fixtures under tests/ must pass; the bodies under
# schema/examples/invalid/ (and any fixture whose path says "invalid") must be
# refused. check-jsonschema comes from PyPI, in a virtualenv under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK_JSONSCHEMA_VERSION=0.39.0
SCHEMA=schema/job.schema.json
VENV=target/ci-venv

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/check-jsonschema" --version 2>/dev/null | awk '{print $NF}')" != "$CHECK_JSONSCHEMA_VERSION" ]; then
  echo "schema: installing check-jsonschema $CHECK_JSONSCHEMA_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA_VERSION"
fi
check() { "$VENV/bin/check-jsonschema" "$@"; }

echo "schema: $SCHEMA against the draft 2020-12 metaschema"
check --check-metaschema "$SCHEMA"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "schema: collecting job bodies"
python3 .ci/extract_jobs.py "$work"
shopt -s nullglob
valid=("$work"/valid/*.json)
invalid=(schema/examples/invalid/*.json "$work"/invalid/*.json)

failed=0
if [ ${#valid[@]} -eq 0 ]; then
  echo "schema: FAIL: no job body found in README.md or the fixtures" >&2
  failed=1
else
  echo "schema: ${#valid[@]} job bodies that must pass"
  check --schemafile "$SCHEMA" "${valid[@]}" || failed=1
fi

if [ ${#invalid[@]} -lt 5 ]; then
  echo "schema: FAIL: schema/examples/invalid/ holds ${#invalid[@]} bodies, expected at least 5" >&2
  failed=1
fi
echo "schema: ${#invalid[@]} job bodies that must be refused"
for body in "${invalid[@]}"; do
  # A body that is not JSON is refused by the worker too, but it tests no rule
  # of the schema: each must parse.
  if ! python3 -m json.tool "$body" >/dev/null 2>&1; then
    echo "  FAIL $body: not JSON, so it tests no rule of the schema" >&2
    failed=1
  elif out=$(check --schemafile "$SCHEMA" -o text "$body" 2>&1); then
    echo "  FAIL $body: accepted, but the worker refuses it" >&2
    failed=1
  else
    # The first error, with the path where the schema refused it.
    echo "  refused $(basename "$body"): $(grep -m1 -E '^\s+[^ ]+: ' <<<"$out" | sed -E 's/^\s+//; s/^[^ ]*::\$/$/' | cut -c1-140)"
  fi
done

if [ "$failed" -ne 0 ]; then
  echo "schema: FAILED" >&2
  exit 1
fi
echo "schema: ok"
