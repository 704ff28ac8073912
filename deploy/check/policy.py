"""Checks rendered Kubernetes objects and the compose file against Learntrail's deployment rules.

    policy.py k8s FILE [--full] --bins a,b,c   rendered manifests (kubectl kustomize / helm template)
    policy.py compose FILE --bins a,b,c         deploy/compose.yaml
    policy.py servicemonitors FILE SCHEMA      ServiceMonitors (not in the Kubernetes schemas)
    policy.py services DOCKERFILE COMPOSE K8S HELM --bins a,b,c --not-services x,y
                                                every service binary is in the image, compose,
                                                the kustomize render and the chart's render

Every rule failure is printed; the exit status is 1 when there was one. `--full` is for a
production render: it must also have default-deny NetworkPolicies, a PodDisruptionBudget per
workload, autoscalers for the edges that scale on load, the stream Job with 3 replicas and a
ServiceMonitor. `--bins` lists the binaries the workspace builds: an object that runs any other
binary is refused (no manifests for a service that does not exist yet).
"""

import json
import sys

import yaml

# edges that scale on load: each must have a HorizontalPodAutoscaler when it is deployed
AUTOSCALED = {"tracking-api", "ws-gateway", "analytics-query"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# ports a workload must be allowed to reach out to by its own NetworkPolicies, with their defaults:
# eagle-pinger's EAGLE_CLOUD_URL is https://rainforestcloud.com:9445
EGRESS_NEEDS = {"eagle-pinger": {443, 9445}}

problems = []


def fail(where, message):
    problems.append(f"{where}: {message}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(obj):
    spec = obj.get("spec", {})
    if obj["kind"] == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    return spec.get("template", {}).get("spec", {}), spec.get("template", {}).get("metadata", {})


def ours(container):
    return "learntrail" in container.get("image", "")


def name_of(obj):
    return f'{obj["kind"]}/{obj["metadata"]["name"]}'


def check_workload(obj, bins):
    where = name_of(obj)
    spec, _ = pod_spec(obj)
    psc = spec.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(where, "pod securityContext.runAsNonRoot must be true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(where, "pod securityContext.seccompProfile.type must be RuntimeDefault")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        cw = f'{where} container {c.get("name")}'
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(cw, "readOnlyRootFilesystem must be true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(cw, "capabilities must drop ALL")
        if sc.get("privileged"):
            fail(cw, "must not be privileged")
        # a file a setting names under /etc/learntrail must be mounted there (the root is read-only
        # and the image has none)
        mounts = [m.get("mountPath", "") for m in c.get("volumeMounts", [])]
        for e in c.get("env", []):
            value = e.get("value") or ""
            if value.startswith("/etc/learntrail/") and not any(
                    value.startswith(m.rstrip("/") + "/") for m in mounts):
                fail(cw, f"{e['name']}={value} is under no volume mount")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits", {}).get("memory"):
            fail(cw, "needs resource requests and a memory limit")
        if ours(c):
            command = (c.get("command") or [None])[0]
            if command not in bins:
                fail(cw, f"runs {command!r}, which the workspace does not build ({', '.join(sorted(bins))})")
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            ready, live = c.get("readinessProbe"), c.get("livenessProbe")
            if not ready or not live:
                fail(cw, "needs a readinessProbe and a livenessProbe")
            elif ours(c):
                if ready.get("httpGet", {}).get("path") != "/readyz":
                    fail(cw, "readinessProbe must GET /readyz")
                if live.get("httpGet", {}).get("path") != "/healthz":
                    fail(cw, "livenessProbe must GET /healthz")


def selects(selector, labels):
    wanted = (selector or {}).get("matchLabels", {})
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check_full(objs):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    policies = by_kind.get("NetworkPolicy", [])
    deny = [p for p in policies if set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    if not deny:
        fail("NetworkPolicy", "no default-deny policy (Ingress and Egress, no rules)")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    for w in by_kind.get("Deployment", []) + by_kind.get("StatefulSet", []):
        _, meta = pod_spec(w)
        labels = meta.get("labels", {})
        if not any(not d["spec"].get("podSelector") or selects(d["spec"]["podSelector"], labels)
                   for d in deny):
            fail(name_of(w), "no default-deny NetworkPolicy covers it")
        if not any(selects(p["spec"].get("selector"), labels) for p in pdbs):
            fail(name_of(w), "no PodDisruptionBudget selects it")
        base = labels.get("app.kubernetes.io/name", "")
        if w["kind"] == "Deployment" and any(base.endswith(s) for s in AUTOSCALED):
            if not any(h["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"] for h in hpas):
                fail(name_of(w), "no HorizontalPodAutoscaler scales it")
        own = [p for p in policies if p["spec"].get("podSelector", {}).get("matchLabels") and
               selects(p["spec"]["podSelector"], labels)]
        if not own:
            fail(name_of(w), "no NetworkPolicy of its own")
        rules = [rule for p in own for rule in p["spec"].get("egress") or []]
        allowed = set()
        for rule in rules:
            for port in rule.get("ports") or []:
                first = port.get("port")
                last = port.get("endPort", first)
                allowed |= set(range(first, last + 1)) if isinstance(first, int) else {first}
        open_ports = any(not rule.get("ports") for rule in rules)  # a rule without ports: all
        for name, needed in EGRESS_NEEDS.items():
            if base.endswith(name) and not open_ports and not needed <= allowed:
                fail(name_of(w), f"its NetworkPolicy lets it reach no port {sorted(needed - allowed)} "
                                 f"(its default destinations need {sorted(needed)})")
    jobs = [j for j in by_kind.get("Job", [])
            if any(c.get("command", [])[:2] == ["learntrail-admin", "provision"]
                   for c in pod_spec(j)[0].get("containers", []))]
    if not jobs:
        fail("Job", "no Job runs learntrail-admin provision")
    configs = {c["metadata"]["name"]: c.get("data", {}) for c in by_kind.get("ConfigMap", [])}
    for j in jobs:
        for c in pod_spec(j)[0]["containers"]:
            env = {}
            for ref in c.get("envFrom", []):
                env.update(configs.get(ref.get("configMapRef", {}).get("name"), {}))
            env.update({e["name"]: e.get("value") for e in c.get("env", []) if "value" in e})
            if env.get("STREAM_REPLICAS") != "3":
                fail(name_of(j), f"provisions STREAM_REPLICAS={env.get('STREAM_REPLICAS')!r}, not 3")
    if not by_kind.get("ServiceMonitor"):
        fail("ServiceMonitor", "none rendered")


def check_numbers(obj):
    """A setting helm wrote in exponent form (5e+06), which the services' parsers refuse, or a URL
    with a password outside the Secret."""
    import re

    values = []
    if obj["kind"] == "ConfigMap":
        values = list((obj.get("data") or {}).items())
    elif obj["kind"] in WORKLOADS:
        spec, _ = pod_spec(obj)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            values += [(e["name"], e.get("value")) for e in c.get("env", []) if "value" in e]
    for name, value in values:
        if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?e\+\d+", value):
            fail(name_of(obj), f"{name}={value!r} is a number in exponent form, which the services refuse")
        # a password in a URL belongs in the Secret (redis-url, eagle-redis-url), not in plain config
        if isinstance(value, str) and re.search(r"\b[a-z]+s?://[^/?#@\s]*:[^/?#@\s]+@", value):
            fail(name_of(obj), f"{name} holds a password in plain config (put the URL in the Secret)")


def check_autoscaled(objs):
    """A workload an autoscaler scales sets no replicas: each apply would put them back."""
    scaled = {(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"])
              for h in objs if h["kind"] == "HorizontalPodAutoscaler"}
    for o in objs:
        if (o["kind"], o["metadata"]["name"]) in scaled and "replicas" in o.get("spec", {}):
            fail(name_of(o), "sets spec.replicas, which its HorizontalPodAutoscaler owns")


def check_k8s(path, full, bins):
    objs = load(path)
    if not objs:
        fail(path, "renders no objects")
    check_autoscaled(objs)
    for o in objs:
        check_numbers(o)
        if o["kind"] in WORKLOADS:
            check_workload(o, bins)
    if full:
        check_full(objs)


def check_compose(path, bins):
    doc = load(path)[0]
    for name, svc in doc.get("services", {}).items():
        if "learntrail" not in str(svc.get("image", "")):
            continue
        command = svc.get("command") or []
        entry = svc.get("entrypoint")
        binary = command[0] if command and not entry else None
        if binary is not None and binary not in bins:
            fail(f"compose service {name}", f"runs {binary!r}, which the workspace does not build")
        exempt = (svc.get("labels") or {}).get("learntrail.healthcheck", "").startswith("none:")
        if binary and binary != "learntrail-admin" and "healthcheck" not in svc and not exempt:
            fail(f"compose service {name}", "needs a healthcheck (or a label learntrail.healthcheck: 'none: <why>')")


def check_servicemonitors(path, schema_path):
    import jsonschema

    with open(schema_path) as f:
        schema = json.load(f)
    for o in load(path):
        if o.get("kind") == "ServiceMonitor":
            for err in jsonschema.Draft7Validator(schema).iter_errors(o):
                fail(name_of(o), f"{'/'.join(map(str, err.path))}: {err.message}")


def commands(objs):
    """The binaries the Learntrail containers of rendered objects run."""
    found = set()
    for o in objs:
        if o.get("kind") in WORKLOADS:
            spec, _ = pod_spec(o)
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                if ours(c) and c.get("command"):
                    found.add(c["command"][0])
    return found


def check_services(dockerfile, compose, k8s, helm, bins, not_services):
    """Issue 16: a service is not finished until it is in the image, compose, kustomize and the
    chart. Every binary the workspace builds is a service unless listed in --not-services."""
    import re

    services = sorted(bins - not_services)
    text = open(dockerfile).read()
    image = set(re.search(r'ARG BINS="([^"]*)"', text).group(1).split())
    doc = load(compose)[0]
    composed = {(svc.get("command") or [None])[0] for svc in doc.get("services", {}).values()
                if "learntrail" in str(svc.get("image", "")) and not svc.get("entrypoint")}
    places = [("the image's BINS (deploy/docker/Dockerfile)", image),
              ("deploy/compose.yaml", composed),
              ("the kustomize base (k8s/base)", commands(load(k8s))),
              ("the helm chart's default render", commands(load(helm)))]
    for service in services:
        for where, found in places:
            if service not in found:
                fail(f"service {service}", f"missing from {where}")


def main(argv):
    mode, path = argv[0], argv[1]
    bins = set()
    if "--bins" in argv:
        bins = set(argv[argv.index("--bins") + 1].split(","))
    if mode == "k8s":
        check_k8s(path, "--full" in argv, bins)
    elif mode == "compose":
        check_compose(path, bins)
    elif mode == "servicemonitors":
        check_servicemonitors(path, argv[2])
    elif mode == "services":
        not_services = set()
        if "--not-services" in argv:
            not_services = set(argv[argv.index("--not-services") + 1].split(","))
        check_services(argv[1], argv[2], argv[3], argv[4], bins, not_services)
    for p in problems:
        print(f"  policy: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
