"""make deploy-check's self-test: breaks copies of the manifests, one way at a time, and checks
that scripts/deploy-check.sh fails on each and names the check that caught it.

    selftest.py REPO_ROOT DEPLOY_CHECK_SCRIPT
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

root, script = sys.argv[1], sys.argv[2]

# (what is broken, file, pattern, replacement, the check line that must fail)
BREAKAGES = [
    ("a misspelt field", "k8s/base/tracking-api/deployment.yaml",
     r"\n  selector:\n", "\n  selectr:\n", "kustomize k8s/base validates"),
    ("replicas beside an autoscaler", "k8s/base/tracking-api/deployment.yaml",
     r"\n  selector:\n", "\n  replicas: 2\n  selector:\n", "kustomize k8s/base validates"),
    ("a missing readiness probe", "k8s/base/tracking-api/deployment.yaml",
     r"          readinessProbe:\n            httpGet: \{path: /readyz, port: metrics\}\n            periodSeconds: 5\n", "",
     "kustomize k8s/base validates"),
    ("a writable root file system", "k8s/base/s3-rotator/statefulset.yaml",
     r"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "kustomize k8s/base validates"),
    ("a binary the workspace does not build", "k8s/base/tracking-api/deployment.yaml",
     r'command: \["tracking-api"\]', 'command: ["no-such-service"]', "kustomize k8s/base validates"),
    ("no autoscaler in production", "k8s/base/tracking-api/kustomization.yaml",
     r"  - scaling.yaml\n", "", "kustomize k8s/overlays/production validates"),
    ("streams with one replica in production", "k8s/overlays/production/kustomization.yaml",
     r"STREAM_REPLICAS=3", "STREAM_REPLICAS=1", "kustomize k8s/overlays/production validates"),
    ("a YAML syntax error", "k8s/base/network.yaml",
     r"  policyTypes: \[Ingress, Egress\]", "  policyTypes: [Ingress, Egress", "kustomize k8s/base renders"),
    ("a chart value of the wrong type", "deploy/helm/learntrail/values.yaml",
     r"\n  replicas: 2\n", "\n  replicas: two\n", "helm chart lints and renders (default values)"),
    ("a broken chart template", "deploy/helm/learntrail/templates/config.yaml",
     r"data:\n", "data:\n  broken: {{ .Values.nats.nope.url }}\n", "helm chart lints and renders (default values)"),
    ("a bad ServiceMonitor", "deploy/helm/learntrail/templates/servicemonitor.yaml",
     r"      path: /metrics", "      pth: /metrics", "helm chart validates (production values"),
    ("a compose typo", "deploy/compose.yaml",
     r"\n    depends_on:\n      nats:", "\n    depend_on:\n      nats:", "compose file matches the compose spec"),
    ("a Dockerfile for a binary that does not exist", "deploy/docker/Dockerfile",
     r'ARG BINS="', 'ARG BINS="no-such-service ', "Dockerfile builds only real binaries"),
    ("a Dockerfile lint error", "deploy/docker/Dockerfile",
     r"WORKDIR /src", "WORKDIR src", "hadolint Dockerfile"),
    ("trailing spaces", "k8s/base/namespace.yaml",
     r"name: learntrail\n", "name: learntrail   \n", "yamllint"),
    ("a service left out of kustomize", "k8s/base/kustomization.yaml",
     r"  - notebook-scanner\n", "", "every service is in the image"),
    ("eagle-pinger cut off from the Rainforest cloud relay", "k8s/base/eagle-pinger/network.yaml",
     r"        - \{protocol: TCP, port: 9445\}\n", "", "kustomize k8s/overlays/production validates"),
    ("a whole number in values written as 5e+06", "deploy/helm/learntrail/templates/_helpers.tpl",
     r"\{\{- \. \| int64 \| quote -\}\}", "{{- . | quote -}}", "helm chart validates (production values"),
    ("a Redis password in plain values", "deploy/helm/learntrail/ci/production-values.yaml",
     r"redis://redis-registry", "redis://:hunter2@redis-registry", "helm chart validates (production values"),
    ("a roster file with no volume behind it", "deploy/helm/learntrail/templates/analytics-query.yaml",
     r'"mountPath" "/etc/learntrail/analytics-query"', '"mountPath" "/etc/learntrail/roster"',
     "helm chart validates (production values"),
    ("a service left out of the image", "deploy/docker/Dockerfile",
     r'(ARG BINS="[^"]*) keen-forwarder', r"\1", "every service is in the image"),
]


# the check group (DEPLOY_ONLY) each check line belongs to
GROUPS = {"kustomize": "k8s", "helm": "helm", "compose": "compose", "hadolint": "docker",
          "Dockerfile": "docker", "yamllint": "yaml", "every service": "services"}


def bins():
    meta = subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                          cwd=root, capture_output=True, text=True, check=True).stdout
    return ",".join(sorted(t["name"] for p in json.loads(meta)["packages"]
                           for t in p["targets"] if "bin" in t["kind"]))


def main():
    env = dict(os.environ, DEPLOY_BINS=bins())
    missed = []
    for what, path, pattern, replacement, check in BREAKAGES:
        with tempfile.TemporaryDirectory(prefix="lt-deploy-selftest-") as tmp:
            for part in ("deploy", "k8s"):
                shutil.copytree(os.path.join(root, part), os.path.join(tmp, part))
            target = os.path.join(tmp, path)
            text = open(target).read()
            broken, count = re.subn(pattern, replacement, text, count=1)
            if count != 1:
                missed.append(f"{what}: pattern not found in {path} (update the self-test)")
                continue
            open(target, "w").write(broken)
            group = GROUPS[next(k for k in GROUPS if check.startswith(k))]
            run = subprocess.run(["bash", script], env=dict(env, DEPLOY_ROOT=tmp, DEPLOY_ONLY=group),
                                 capture_output=True, text=True)
            failed_lines = [l for l in run.stdout.splitlines() if l.startswith("  FAIL  ")]
            caught = run.returncode != 0 and any(check in l for l in failed_lines)
            print(f"  {'caught' if caught else 'MISSED'}  {what} ({path}) -> {check}")
            if not caught:
                missed.append(what)
                print(run.stdout[-3000:], run.stderr[-2000:])
    if missed:
        print(f"deploy-check self-test: {len(missed)} breakage(s) not caught: {missed}")
        return 1
    print(f"deploy-check self-test: all {len(BREAKAGES)} breakages caught")
    return 0


sys.exit(main())
