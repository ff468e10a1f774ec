"""Renders helm/broadside with Helm's own SDK for the default values and the
production example, lints it, validates every manifest against the
Kubernetes schemas, and checks the chart's policies. Exits non-zero on the
first broken rule, naming the values file, the manifest and the rule.

Run by tests/run.sh in a virtualenv with helm-python-sdk and kubernetes-validate;
with BROADSIDE_BIN set, the rendered config.toml is also loaded by Broadside."""

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "broadside"
KUBE_VERSION = "1.32.0"
# Custom resources the Kubernetes schemas do not cover (their operators validate them).
CRDS = {"ScaledObject", "ServiceMonitor"}
SECRETISH = ("KEY", "PASSWORD", "TOKEN", "SECRET")

failures = []


def fail(where, rule):
    failures.append(f"{where}: {rule}")


def check(values_name, values):
    lint = helm_python.lint(CHART, values, strict=True)
    for message in lint.get("messages", []):
        if message.get("severity", 0) >= 3:  # errors (info and warnings are reported, not fatal)
            fail(values_name, f"lint: {message}")
    if lint.get("errors"):
        fail(values_name, f"lint errors: {lint['errors']}")
    chart = helm_python.Chart.load(CHART)
    rendered = chart.render(values, name="bs", namespace="mail", is_install=True)
    docs = []
    for path, text in rendered.items():
        if path.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    kinds = {}
    for path, doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
        where = f"{values_name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            fail(where, f"schema: {error.message} at {'/'.join(map(str, error.path))}")
        if doc["kind"] == "Secret":
            fail(where, "the chart must not create Secrets (reference existing ones)")

    config_text = kinds["ConfigMap"][0]["data"]["config.toml"]
    config = tomllib.loads(config_text)
    binary = os.environ.get("BROADSIDE_BIN")
    if binary:
        # The rendered config must load in Broadside itself (unknown keys and bad values are errors there).
        with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
            file.write(config_text)
            file.flush()
            loaded = subprocess.run([binary, "--config", file.name, "config", "print"], capture_output=True, text=True)
        if loaded.returncode != 0:
            fail(values_name, f"broadside refuses the rendered config.toml: {loaded.stderr.strip()}")
    drain = config["sender"]["drain_timeout_secs"]
    deployments = kinds.get("Deployment", [])
    roles = set(values.get("roles") or yaml.safe_load((CHART / "values.yaml").read_text())["roles"])
    if {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} != roles:
        fail(values_name, f"one Deployment per role {sorted(roles)}")
    for deployment in deployments:
        where = f"{values_name}: Deployment/{deployment['metadata']['name']}"
        pod = deployment["spec"]["template"]["spec"]
        if pod.get("terminationGracePeriodSeconds", 30) < drain + 5:
            fail(where, f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} < drain {drain} + 5")
        security = pod.get("securityContext", {})
        if not security.get("runAsNonRoot") or security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(where, "pod must run as non-root with seccomp RuntimeDefault")
        for container in pod["containers"]:
            c = f"{where} container {container['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in container.get(probe, {}):
                    fail(c, f"{probe} must be a gRPC health probe")
            if "preStop" not in container.get("lifecycle", {}):
                fail(c, "needs a preStop hook")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    fail(c, f"resources.{kind} needs cpu and memory")
            sc = container.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                fail(c, "read-only root filesystem and no privilege escalation")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(c, "must drop all capabilities")
            for env in container.get("env", []):
                if any(word in env["name"].upper() for word in SECRETISH) and "value" in env:
                    fail(c, f"env {env['name']} is inline; reference a Secret")
    pdbs = kinds.get("PodDisruptionBudget", [])
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"] == selector]
        if len(matching) != 1:
            fail(f"{values_name}: Deployment/{deployment['metadata']['name']}", f"{len(matching)} PDBs match it, want 1")
    hooks = [j for j in kinds.get("Job", []) if "pre-upgrade" in j["metadata"].get("annotations", {}).get("helm.sh/hook", "")]
    if not hooks or hooks[0]["spec"]["template"]["spec"]["containers"][0]["args"] != ["migrate"]:
        fail(values_name, "a pre-install/pre-upgrade Job runs `broadside migrate`")
    if not (kinds.get("HorizontalPodAutoscaler") or kinds.get("ScaledObject")):
        fail(values_name, "senders need an HPA or a KEDA ScaledObject")
    headless = [s for s in kinds.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    if not headless:
        fail(values_name, "a headless Service for client-side gRPC balancing")
    print(f"{values_name}: {len(docs)} manifests rendered and checked ({', '.join(sorted(kinds))})")


check("values.yaml (defaults)", {})
check("examples/production.yaml", yaml.safe_load((CHART / "examples" / "production.yaml").read_text()))
if failures:
    print("helm chart check failed:", *failures, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print("helm chart: lint, Kubernetes schemas and policies pass")
