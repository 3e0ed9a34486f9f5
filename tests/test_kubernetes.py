"""deploy/: the Kustomize base and overlays, rendered and validated offline.

No cluster and no kubectl here: each overlay is rendered by tests/kustomize_lite.py (the
subset of Kustomize deploy/ uses; any other field fails the render) and every object is
validated against the Kubernetes OpenAPI schemas shipped in the ``kubernetes-validate``
package (strict: unknown fields are errors), with the network switched off. KEDA's
ScaledObject is validated against deploy/schemas/keda-scaledobject-v1alpha1.schema.json, a
schema written for Prism from KEDA's CRD (see its ``$comment``), plus the checks KEDA's
admission webhook makes. Then what the objects mean: drain timings add up, disruption budgets
cover every Deployment, and production scales on prism_in_flight_requests with CPU as fallback.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from prism.gateway.cli import build_parser
from prism.gateway.metrics import Metrics
from prism.gateway.policy import parse_policy
from prism.gateway.runtime import CLOSE_TIMEOUT_S
from prism.gateway.shared_redis import check_redis_url, is_cluster_url
from tests.kustomize_lite import UnsupportedKustomization, merge, render
from tests.support import ROOT

#: the oldest Kubernetes the manifests promise to work on (preStop `sleep` is on by default
#: from 1.30)
KUBERNETES = "1.30"
DEPLOY = ROOT / "deploy"
FOLDERS = ["base", "overlays/dev", "overlays/production"]
KEDA_SCHEMA = json.loads(
    (DEPLOY / "schemas" / "keda-scaledobject-v1alpha1.schema.json").read_text()
)
LOCAL_IMAGES = {
    f"{registry}prism-gateway:{tag}"
    for registry in ("", "registry.example.com/prism/")
    for tag in ("slim", "latest")
}
PUBLIC_IMAGES = {"redis:7-alpine"}

Object = dict[str, Any]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: validation must use the schemas on disk."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network access in an offline validation test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def rendered(folder: str) -> list[Object]:
    return render(DEPLOY / folder)


def by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(deployment: Object) -> Object:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def prism_deployments(objects: list[Object]) -> Iterator[Object]:
    for d in by_kind(objects, "Deployment").values():
        if pod_spec(d)["containers"][0].get("command", [""])[0] == "prism":
            yield d


def validate_scaled_object(obj: Object, objects: list[Object]) -> None:
    """The schema, then what KEDA's webhook refuses that a schema cannot say."""
    jsonschema.validate(obj, KEDA_SCHEMA)
    spec = obj["spec"]
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    triggers = spec["triggers"]
    if "fallback" in spec:  # KEDA: a trigger other than cpu/memory must carry the fallback
        assert any(t["type"] not in ("cpu", "memory") for t in triggers)
    target = by_kind(objects, "Deployment")[spec["scaleTargetRef"]["name"]]
    if any(t["type"] == "cpu" for t in triggers):  # utilisation needs a request to divide by
        assert all("cpu" in c["resources"]["requests"] for c in pod_spec(target)["containers"])


def validate(obj: Object, objects: list[Object]) -> None:
    if obj["kind"] == "ScaledObject":
        validate_scaled_object(obj, objects)
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_object_validates_offline(folder: str, offline: None) -> None:
    objects = rendered(folder)
    assert objects
    for obj in objects:
        validate(obj, objects)


@pytest.mark.parametrize("folder", FOLDERS)
def test_images_commands_and_policies_are_the_repos(folder: str) -> None:
    objects = rendered(folder)
    for d in by_kind(objects, "Deployment").values():
        for c in pod_spec(d)["containers"]:
            assert c["image"] in LOCAL_IMAGES | PUBLIC_IMAGES, c["image"]
            if c.get("command", [None])[0] == "prism":
                build_parser().parse_args(c["command"][1:])  # SystemExit on a bad flag
    for name, text in by_kind(objects, "ConfigMap")["prism-policy"]["data"].items():
        parse_policy(text, f"{folder}: prism-policy/{name}")


def test_the_validators_refuse_what_a_cluster_would(offline: None) -> None:
    """Not vacuous: a typo, a wrong type, a ScaledObject missing its query all fail."""
    objects = rendered("overlays/production")
    gateway = by_kind(objects, "Deployment")["prism-gateway"]
    typo = copy.deepcopy(gateway)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 35
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "three"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(bad, objects)
    scaled = by_kind(objects, "ScaledObject")["prism-gateway"]
    no_query = copy.deepcopy(scaled)
    del no_query["spec"]["triggers"][0]["metadata"]["query"]
    bad_number = copy.deepcopy(scaled)
    bad_number["spec"]["triggers"][0]["metadata"]["threshold"] = "eight"
    for bad in (no_query, bad_number):
        with pytest.raises(jsonschema.ValidationError):
            validate(bad, objects)
    only_cpu = copy.deepcopy(scaled)
    only_cpu["spec"]["triggers"] = [t for t in scaled["spec"]["triggers"] if t["type"] == "cpu"]
    with pytest.raises(AssertionError):  # KEDA refuses a fallback without a metric trigger
        validate(only_cpu, objects)


def test_the_renderer_refuses_what_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {team: search}\n")
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)
    # strategic merge: named lists merge by name, maps merge, other lists are replaced
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["p"]}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["q"]}]}
    assert merge(base, patch) == {
        "containers": [
            {
                "name": "a",
                "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                "args": ["q"],
            }
        ]
    }


# --- what the objects mean ---------------------------------------------------------------------


def settings(objects: list[Object]) -> dict[str, str]:
    return by_kind(objects, "ConfigMap")["prism-settings"]["data"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("folder", FOLDERS)
def test_termination_grace_outlasts_prestop_grace_and_drain(folder: str) -> None:
    objects = rendered(folder)
    env = settings(objects)
    drain_s = float(env["PRISM_DRAIN_GRACE_S"]) + float(env["PRISM_DRAIN_TIMEOUT_S"])
    for d in prism_deployments(objects):
        spec = pod_spec(d)
        container = spec["containers"][0]
        assert {"configMapRef": {"name": "prism-settings"}} in container["envFrom"]
        pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        # SIGKILL must never cut a drain short: preStop, then the drain and the lifespan's
        # bounded close, with time to spare
        needed_s = pre_stop_s + drain_s + CLOSE_TIMEOUT_S
        assert spec["terminationGracePeriodSeconds"] > needed_s, d["metadata"]["name"]
        # and a rollout never takes capacity away before the new pod is ready
        assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("folder", FOLDERS)
def test_readiness_and_disruption_budgets(folder: str) -> None:
    objects = rendered(folder)
    budgets = by_kind(objects, "PodDisruptionBudget").values()
    for d in prism_deployments(objects):
        container = pod_spec(d)["containers"][0]
        path = container["readinessProbe"]["httpGet"]["path"]
        # a gateway is ready when its routes have targets; a worker when its model is loaded
        assert path == ("/readyz" if container["command"][1] == "serve" else "/v2/health/ready")
        labels = d["spec"]["template"]["metadata"]["labels"]
        covering = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, d["metadata"]["name"]
        assert covering[0]["spec"]["maxUnavailable"] == 1


def test_production_scales_on_in_flight_requests_with_cpu_as_fallback() -> None:
    objects = rendered("overlays/production")
    assert by_kind(objects, "HorizontalPodAutoscaler") == {}  # KEDA owns the HPA
    scaled = by_kind(objects, "ScaledObject")
    deployments = by_kind(objects, "Deployment")
    exported = Metrics()
    exported.count_in_flight()
    metrics_text = exported.render().decode()
    assert set(scaled) == {"prism-gateway", "prism-text-worker"}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        first, *rest = spec["triggers"]
        assert first["type"] == "prometheus" and first["metricType"] == "AverageValue"
        query = first["metadata"]["query"]
        metric = re.match(r"sum\((\w+)\{", query)
        assert metric is not None and metric.group(1) == "prism_in_flight_requests"
        assert f"\n{metric.group(1)} " in metrics_text  # a metric Prism really exports
        # the query's namespace and pods are this Deployment's
        assert f'namespace="{obj["metadata"]["namespace"]}"' in query
        assert f'pod=~"{name}-.*"' in query
        assert [t["type"] for t in rest] == ["cpu"]
        assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
        assert deployments[name]["spec"]["replicas"] == spec["minReplicaCount"]


def test_redis_urls_keys_and_images_per_overlay() -> None:
    dev, prod = rendered("overlays/dev"), rendered("overlays/production")
    dev_url = check_redis_url(settings(dev)["PRISM_REDIS_URL"])
    assert not is_cluster_url(dev_url)
    assert "prism-redis" in by_kind(dev, "Service")  # the url names a Service that exists
    prod_url = check_redis_url(settings(prod)["PRISM_REDIS_URL"])
    assert is_cluster_url(prod_url)
    assert "prism-redis" not in by_kind(prod, "Deployment") | by_kind(prod, "Service")
    # keys: a Secret of empty lists in dev; none shipped for production, and pods need one
    assert by_kind(dev, "Secret")["prism-keys"]["stringData"]["PRISM_API_KEYS"] == "[]"
    assert by_kind(prod, "Secret") == {}
    gateway = pod_spec(by_kind(prod, "Deployment")["prism-gateway"])["containers"][0]
    assert {"secretRef": {"name": "prism-keys"}} in gateway["envFrom"]  # not optional
    assert gateway["image"] == "registry.example.com/prism/prism-gateway:slim"  # slim kept
    assert by_kind(dev, "Deployment")["prism-gateway"]["spec"]["replicas"] == 1
    assert all(o["metadata"].get("namespace") == "prism" for o in prod if o["kind"] != "Namespace")


def test_compose_drains_like_kubernetes() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    env = settings(rendered("base"))
    drain_s = float(env["PRISM_DRAIN_GRACE_S"]) + float(env["PRISM_DRAIN_TIMEOUT_S"])
    for name in ("gateway", "text-worker", "clip-worker"):
        svc = compose["services"][name]
        assert svc["environment"]["PRISM_DRAIN_GRACE_S"] == env["PRISM_DRAIN_GRACE_S"]
        assert svc["environment"]["PRISM_DRAIN_TIMEOUT_S"] == env["PRISM_DRAIN_TIMEOUT_S"]
        # docker stops with SIGKILL after stop_grace_period (default 10 s)
        assert float(svc["stop_grace_period"].rstrip("s")) > drain_s + CLOSE_TIMEOUT_S, name
