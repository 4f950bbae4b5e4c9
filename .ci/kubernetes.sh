#!/usr/bin/env bash
# The Kubernetes manifests, deploy/kubernetes/*.yaml, checked offline (no
# cluster): every document against the API schemas of pinned Kubernetes
# versions by kubernetes-validate in strict mode (an unknown or misspelt field
# fails), then what must agree between the documents (ports, selectors, the
# grace period against the shutdown timeout, the apps file and its key files
# against the Secret mounted). kubernetes-validate comes from PyPI, in a
# virtualenv under target/.
#
#   .ci/kubernetes.sh [DIR]    (DIR: deploy/kubernetes unless given)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest Kubernetes the manifests claim (PodDisruptionBudget's
# unhealthyPodEvictionPolicy is on by default from 1.27) and the newest the
# package bundles.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
VENV=target/ci-venv
DIR=${1:-deploy/kubernetes}

if [ ! -x "$VENV/bin/pip" ]; then
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  echo "kubernetes: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

mapfile -t files < <(find "$DIR" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if [ ${#files[@]} -eq 0 ]; then
  echo "kubernetes: FAIL: no manifest under $DIR" >&2
  exit 1
fi

# Parsed first, refusing a key given twice in one mapping (PyYAML, and so
# kubernetes-validate, keep the last silently; kubectl refuses it). Prints
# the number of documents.
documents=$("$VENV/bin/python" - "${files[@]}" <<'PY'
import sys
import yaml

class Strict(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)

Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
count = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            docs = [d for d in yaml.load_all(f, Loader=Strict) if d]
    except yaml.YAMLError as e:
        sys.exit(f"kubernetes: FAIL: {path}: {e}")
    if not docs:
        sys.exit(f"kubernetes: FAIL: {path}: no document")
    count += len(docs)
print(count)
PY
)

status=0
for version in "${KUBERNETES_VERSIONS[@]}"; do
  echo "kubernetes: ${#files[@]} file(s), $documents document(s), against Kubernetes $version, strict"
  out=$("$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$version" "${files[@]}") || status=1
  printf '%s\n' "$out"
  # A kind or apiVersion it has no schema for is only a warning there (exit
  # 0): here every document must pass, each by name.
  passed=$(grep -c '^INFO .* passed for resource ' <<<"$out" || true)
  if grep -v '^INFO ' <<<"$out" | grep -q . || [ "$passed" -ne "$documents" ]; then
    echo "kubernetes: FAIL: $passed of $documents document(s) passed against $version" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] || { echo "kubernetes: FAIL: schema validation" >&2; exit 1; }

echo "kubernetes: checking that the documents agree"
"$VENV/bin/python" - "${files[@]}" <<'PY'
import posixpath
import sys
import tomllib
import yaml

docs = [d for path in sys.argv[1:] for d in yaml.safe_load_all(open(path)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []

def one(kind, name="broadcast-worker"):
    found = [d for d in by_kind.get(kind, []) if d["metadata"]["name"] == name]
    if len(found) != 1:
        problems.append(f"{kind} {name}: found {len(found)}, expected 1")
        return None
    return found[0]

for d in docs:
    if "namespace" in d["metadata"]:
        problems.append(f"{d['kind']} {d['metadata']['name']}: sets a namespace")

deployment = one("Deployment")
pdb = one("PodDisruptionBudget")
service = one("Service")
if deployment:
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    def selects(what, selector):
        if any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{what}'s selector {selector} does not select the pods {labels}")
    selects("Deployment", deployment["spec"]["selector"]["matchLabels"])
    if pdb:
        selects("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])
    if service:
        selects("Service", service["spec"]["selector"])
    spec = pod["spec"]
    (worker,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in worker.get("env", [])}
    # BROADCAST_METRICS_ADDR and BROADCAST_SHUTDOWN_TIMEOUT_SECS: defaults of
    # src/cli/run.rs when not set.
    ops_port = int(env.get("BROADCAST_METRICS_ADDR", "0.0.0.0:9090").rsplit(":", 1)[1])
    ports = {p.get("name"): p["containerPort"] for p in worker["ports"]}
    if ports.get("ops") != ops_port:
        problems.append(f"containerPort ops {ports.get('ops')} is not BROADCAST_METRICS_ADDR's {ops_port}")
    def port_of(p):
        return ports.get(p) if isinstance(p, str) else p
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        get = worker.get(probe, {}).get("httpGet")
        if not get or get["path"] != path or port_of(get["port"]) != ops_port:
            problems.append(f"{probe} is not httpGet {path} on the ops port {ops_port}")
    if service:
        (sp,) = service["spec"]["ports"]
        if port_of(sp["targetPort"]) != ops_port:
            problems.append(f"Service targetPort {sp['targetPort']} is not the ops port {ops_port}")
        scrape = service["metadata"].get("annotations", {}).get("prometheus.io/port")
        if scrape != str(sp["port"]):
            problems.append(f"prometheus.io/port {scrape} is not the Service's port {sp['port']}")
    shutdown = int(env.get("BROADCAST_SHUTDOWN_TIMEOUT_SECS", "15"))
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= shutdown:
        problems.append(f"terminationGracePeriodSeconds {grace} is not above the shutdown timeout {shutdown}")
    # The apps file lies in the mounted Secret, and the example Secret has
    # every key file the example apps file names.
    apps_file = env.get("BROADCAST_APPS_FILE")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mount = next((m for m in worker.get("volumeMounts", [])
                  if apps_file and posixpath.dirname(apps_file) == m["mountPath"].rstrip("/")), None)
    secret_name = mount and volumes.get(mount["name"], {}).get("secret", {}).get("secretName")
    if not secret_name:
        problems.append(f"BROADCAST_APPS_FILE {apps_file} is not in a mounted Secret's directory")
    elif "subPath" in mount:
        problems.append("the apps Secret is mounted with subPath: an edited Secret would never reach it")
    else:
        example = next((d for d in by_kind.get("Secret", []) if d["metadata"]["name"] == secret_name), None)
        if example is None:
            problems.append(f"no example Secret {secret_name}")
        else:
            keys = example.get("stringData", {})
            name = posixpath.basename(apps_file)
            if name not in keys:
                problems.append(f"Secret {secret_name} has no {name}")
            else:
                for app in tomllib.loads(keys[name]).get("app", []):
                    key_file = app.get("secret_key_file", "")
                    if key_file.startswith("/"):
                        inside = posixpath.dirname(key_file) == posixpath.dirname(apps_file)
                        key_file = posixpath.basename(key_file) if inside else None
                    if key_file not in keys:
                        problems.append(f"app {app.get('sdkappid')}: secret_key_file {app.get('secret_key_file')} is not a key of Secret {secret_name}")
    for ref in worker.get("envFrom", []):
        name = ref.get("secretRef", {}).get("name")
        example = next((d for d in by_kind.get("Secret", []) if d["metadata"]["name"] == name), None)
        if name and example is None:
            problems.append(f"no example Secret {name}")
        elif name and "AMQP_URL" not in example.get("stringData", {}):
            problems.append(f"Secret {name} has no AMQP_URL")

for p in problems:
    print(f"kubernetes: FAIL: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"kubernetes: {len(docs)} document(s) agree: ports, selectors, grace period, apps file and key files")
PY
echo "kubernetes: ok"
