"""The deploy checks (scripts/check-deploy runs this in its venv).

Renders every kustomization with `kubectl kustomize` (deploy/, deploy/overlays/deis, and the
whole stack moved to another namespace by an overlay of the kind an operator writes), validates
every rendered object against the Kubernetes OpenAPI schemas offline (kubernetes-validate,
strict: an unknown or misspelt field fails), for the oldest and the newest Kubernetes its
schemas cover, then checks what the schemas cannot: what the issue and deploy/README.md promise
about these manifests. Every failure is listed; the exit status is 1 when there is one.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The Kubernetes versions validated against: the oldest and the newest schemas the pinned
# kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.25.0", "1.37.0"]
# Secrets the operator creates (deploy/README.md); everything else a pod references must be
# in the rendering.
USER_SECRETS = {"logmill-influxdb", "logmill-grafana", "influxdb-creds"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}

failures = []


def fail(where, message):
    failures.append(f"{where}: {message}")


def render(kubectl, directory):
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(str(directory), f"kubectl kustomize failed:\n{out.stderr}")
        return None, []
    return out.stdout, [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def validate(validator, name, text, workdir):
    path = pathlib.Path(workdir) / f"{name}.yaml"
    path.write_text(text)
    for version in KUBERNETES_VERSIONS:
        out = subprocess.run(
            [validator, "--strict", "--quiet", "-k", version, str(path)], capture_output=True, text=True
        )
        if out.returncode != 0:
            fail(name, f"kubernetes-validate --strict -k {version}:\n{out.stdout}{out.stderr}")


def ident(obj):
    meta = obj.get("metadata", {})
    return f"{obj['kind']}/{meta.get('namespace', '-')}/{meta.get('name')}"


def pod_spec(obj):
    if obj["kind"] in LONG_RUNNING or obj["kind"] == "Job":
        return obj["spec"]["template"]["spec"]
    return None


def check_pods(name, objects):
    """Every container: pinned image, requests and limits, hardened securityContext; every
    long-running main container: liveness and readiness probes; every referenced ConfigMap
    and Secret exists (or is one the operator creates)."""
    config_maps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"} | USER_SECRETS
    service_accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{name}: {ident(obj)}"
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(where, "no RuntimeDefault seccomp profile")
        sa = spec.get("serviceAccountName")
        if sa and sa not in service_accounts:
            fail(where, f"service account {sa} is not in the rendering")
        if not sa and spec.get("automountServiceAccountToken") is not False:
            fail(where, "uses the default service account with its token mounted")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] not in config_maps:
                fail(where, f"ConfigMap {volume['configMap']['name']} is not in the rendering")
        containers = [(c, False) for c in spec.get("initContainers", [])]
        containers += [(c, True) for c in spec["containers"]]
        for container, main in containers:
            cwhere = f"{where} container {container['name']}"
            image = container["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                fail(cwhere, f"image {image} has no pinned tag")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        fail(cwhere, f"no {kind}.{resource}")
            sc = container.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(cwhere, "root filesystem not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(cwhere, "privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                fail(cwhere, "capabilities not all dropped")
            if sc.get("privileged"):
                fail(cwhere, "privileged")
            run_as_root = sc.get("runAsUser", pod_sc.get("runAsUser")) == 0
            if main and (run_as_root or pod_sc.get("runAsNonRoot") is not True):
                fail(cwhere, "main container may run as root")
            if main and obj["kind"] in LONG_RUNNING:
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        fail(cwhere, f"no {probe}")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] not in secrets:
                    fail(cwhere, f"Secret {ref['name']} is neither rendered nor created by the operator")
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["name"] not in config_maps:
                    fail(cwhere, f"ConfigMap {ref['name']} is not in the rendering")


def check_bindings(name, objects):
    """A ClusterRoleBinding's ServiceAccount subjects are the rendered service accounts, in
    the namespace they were rendered into (kustomize rewrites only subjects in `default`)."""
    accounts = {
        (o["metadata"]["name"], o["metadata"].get("namespace"))
        for o in objects
        if o["kind"] == "ServiceAccount"
    }
    for obj in objects:
        if obj["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        for subject in obj.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and (subject["name"], subject.get("namespace")) not in accounts:
                fail(f"{name}: {ident(obj)}", f"binds {subject}, which is not a rendered service account")


def find(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found[0] if len(found) == 1 else None


def container_of(obj, name):
    return next(c for c in pod_spec(obj)["containers"] if c["name"] == name)


def check_agent(name, objects, host_collectors):
    agent = find(objects, "DaemonSet", "logmill-agent")
    if agent is None:
        return fail(name, "no DaemonSet logmill-agent")
    where = f"{name}: {ident(agent)}"
    spec = pod_spec(agent)
    container = container_of(agent, "agent")
    if agent["spec"].get("updateStrategy", {}).get("type") != "RollingUpdate":
        fail(where, "not RollingUpdate")
    if {"operator": "Exists"} not in spec.get("tolerations", []):
        fail(where, "does not tolerate every taint")
    env = {e["name"]: e for e in container.get("env", [])}
    if env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "spec.nodeName":
        fail(where, "NODE_NAME is not the downward API's spec.nodeName")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/var/log", "/var/lib/docker/containers"):
        mount = mounts.get(path)
        if mount is None or volumes[mount["name"]].get("hostPath", {}).get("path") != path:
            fail(where, f"host {path} not mounted at {path}")
        elif mount.get("readOnly") is not True:
            fail(where, f"{path} is mounted writable")
    state = mounts.get("/var/lib/logmill")
    if state is None or "hostPath" not in volumes[state["name"]]:
        fail(where, "checkpoints (/var/lib/logmill) are not on a hostPath")
    elif "--state-dir=/var/lib/logmill" not in container["args"]:
        fail(where, "--state-dir is not the checkpoint hostPath")
    if host_collectors:
        rootfs = mounts.get("/rootfs")
        if rootfs is None or rootfs.get("readOnly") is not True:
            fail(where, "the host's root is not mounted read-only at /rootfs")
        for var, value in (("HOST_PROC", "/rootfs/proc"), ("HOST_SYS", "/rootfs/sys")):
            if env.get(var, {}).get("value") != value:
                fail(where, f"{var} is not {value}")
        if spec.get("hostNetwork") is not True:
            fail(where, "no hostNetwork: net and netstat would count the pod's network")
    elif "/rootfs" in mounts or spec.get("hostNetwork"):
        fail(where, "host root or network without host collectors")
    role = find(objects, "ClusterRole", "logmill-agent")
    rules = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]} if role else set()
    for needed in (("pods", "get"), ("nodes/stats", "get")):
        if needed not in rules:
            fail(f"{name}: ClusterRole logmill-agent", f"does not grant {needed}")
    if ("nodes/proxy", "get") in rules:
        fail(f"{name}: ClusterRole logmill-agent", "grants nodes/proxy, which logmill does not need")


def check_consume(name, objects):
    consume = find(objects, "Deployment", "logmill-consume")
    if consume is None:
        return fail(name, "no Deployment logmill-consume")
    where = f"{name}: {ident(consume)}"
    if consume["spec"].get("replicas", 1) < 2:
        fail(where, "fewer than 2 replicas")
    args = container_of(consume, "consume")["args"]
    if "--channel=logmill" not in args:
        fail(where, "the channel is not `logmill`")
    if "--instance=$(POD_NAME)" not in args:
        fail(where, "replicas do not get distinct instance names")


def check_stack(name, objects):
    """The whole stack: nsqd, nsqlookupd, InfluxDB, Grafana and its provisioning."""
    nsqd = find(objects, "StatefulSet", "nsqd")
    if nsqd is None or not nsqd["spec"].get("volumeClaimTemplates"):
        fail(name, "no nsqd StatefulSet with a volume")
    else:
        service = find(objects, "Service", nsqd["spec"]["serviceName"])
        if service is None or service["spec"].get("clusterIP") != "None":
            fail(name, "nsqd's Service is not headless")
        hook = json.dumps(container_of(nsqd, "nsqd").get("lifecycle", {}))
        for needed in ("/topic/create", "/channel/create", "channel=logmill", "logs metrics"):
            if needed not in hook:
                fail(name, f"nsqd's postStart does not create topics and channels ({needed})")
    if find(objects, "StatefulSet", "nsqlookupd") is None:
        fail(name, "no nsqlookupd")
    consume = find(objects, "Deployment", "logmill-consume")
    if consume is not None and not any(a.startswith("--lookupd=") for a in container_of(consume, "consume")["args"]):
        fail(name, "logmill consume does not discover nsqd through nsqlookupd")
    influx = find(objects, "StatefulSet", "influxdb")
    if influx is None or not influx["spec"].get("volumeClaimTemplates"):
        fail(name, "no InfluxDB StatefulSet with a volume")
    else:
        env = container_of(influx, "influxdb")["env"]
        secret_refs = [e for e in env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
        if not any(e["name"] == "INFLUXDB_ADMIN_PASSWORD" for e in secret_refs):
            fail(name, "InfluxDB's credentials do not come from a Secret")
    provisioning = find(objects, "ConfigMap", next(
        (v["configMap"]["name"] for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "grafana"
         for v in pod_spec(o)["volumes"] if v["name"] == "provisioning"), ""))
    if provisioning is None:
        return fail(name, "no Grafana provisioning ConfigMap")
    datasources = yaml.safe_load(provisioning["data"]["datasources.yaml"])["datasources"]
    if [d["type"] for d in datasources] != ["influxdb"] or datasources[0]["jsonData"]["dbName"] != "kubernetes":
        fail(name, f"Grafana's provisioned datasource is not InfluxDB database kubernetes: {datasources}")
    dashboards = find(objects, "ConfigMap", next(
        (v["configMap"]["name"] for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "grafana"
         for v in pod_spec(o)["volumes"] if v["name"] == "dashboards"), ""))
    files = {p.name: p.read_text() for p in (DEPLOY / "dashboards").glob("*.json")}
    if dashboards is None or dashboards["data"] != files:
        fail(name, "Grafana's dashboards ConfigMap is not exactly deploy/dashboards/*.json")
    for file, text in files.items():
        try:
            json.loads(text)
        except ValueError as error:
            fail(f"deploy/dashboards/{file}", f"not JSON: {error}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--validator", required=True)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="logmill-deploy-check-") as workdir:
        # The stack in another namespace, as an operator's own overlay puts it.
        moved = pathlib.Path(workdir) / "moved"
        moved.mkdir()
        (moved / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"namespace: observability\nresources:\n  - {os.path.relpath(DEPLOY, moved)}\n"
        )
        renderings = [
            ("deploy", DEPLOY, "logmill", True),
            ("deploy/overlays/deis", DEPLOY / "overlays" / "deis", "deis", False),
            ("deploy in namespace observability", moved, "observability", True),
        ]
        for name, directory, namespace, whole_stack in renderings:
            text, objects = render(options.kubectl, directory)
            if text is None:
                continue
            validate(options.validator, name.replace("/", "_").replace(" ", "_"), text, workdir)
            for obj in objects:
                ns = obj["metadata"].get("namespace")
                cluster_scoped = obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding")
                if not cluster_scoped and ns != namespace:
                    fail(f"{name}: {ident(obj)}", f"not in namespace {namespace}")
                if obj["kind"] == "Namespace" and obj["metadata"]["name"] != namespace:
                    fail(f"{name}: {ident(obj)}", f"the Namespace is not {namespace}")
            check_pods(name, objects)
            check_bindings(name, objects)
            check_agent(name, objects, host_collectors=whole_stack)
            check_consume(name, objects)
            if whole_stack:
                check_stack(name, objects)
            else:
                kinds = {o["kind"] for o in objects}
                if kinds & {"StatefulSet", "Namespace"}:
                    fail(name, f"the overlay must keep the install's nsqd, InfluxDB and namespace: {kinds}")
            print(f"deploy check: {name}: {len(objects)} objects rendered and checked")
    # The dashboards are generate.py's output, so an edit of one JSON file is not lost at the
    # next generation.
    out = subprocess.run([sys.executable, str(DEPLOY / "dashboards" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail("deploy/dashboards", out.stderr.strip())
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"deploy checks: {len(renderings)} renderings, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
