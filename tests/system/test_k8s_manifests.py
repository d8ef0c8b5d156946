"""deploy/k8s: the example overlay renders with `kubectl kustomize`, every object it makes is
valid against the Kubernetes schemas (kubernetes-validate, offline, strict: no unknown field),
and the objects a fleet relies on are there and agree with each other (probes, drain, PDB, HPA,
policy ConfigMap, master-key Secret, external Redis and Postgres)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
K8S_VERSION = "1.30.0"  # the oldest release the manifests promise to work on


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is missing: rendering needs kubectl 1.27+ (kustomize v5)")
    # Debian's kubernetes-client (1.20) bundles kustomize v2, which lacks `labels:`.
    version = subprocess.run(
        [kubectl, "version", "--client"], capture_output=True, text=True, timeout=30
    ).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if found is None or int(found.group(1)) < 5:
        pytest.skip(f"kubectl's kustomize is older than v5 ({version.strip()!r})")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def test_every_object_is_valid_against_the_schemas(objects: list[dict[str, Any]]) -> None:
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}")
    assert problems == []
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "routegate"
    }


def test_deployment_probes_drain_and_security(objects: list[dict[str, Any]]) -> None:
    (deploy,) = by_kind(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    assert box["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert box["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert box["image"] == "registry.example.com/routegate:0.1.0"
    args = box["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    pre_stop = float(box["lifecycle"]["preStop"]["exec"]["command"][-1])
    # The kubelet's SIGKILL must come after preStop plus the whole drain.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (deploy/Dockerfile)
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert box["resources"]["requests"] and box["resources"]["limits"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pdb_hpa_and_service_select_the_deployment(objects: list[dict[str, Any]]) -> None:
    (deploy,) = by_kind(objects, "Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (service,) = [s for s in by_kind(objects, "Service") if s["spec"]["type"] == "ClusterIP"]
    assert service["spec"]["selector"].items() <= labels.items()
    external = [s for s in by_kind(objects, "Service") if s["spec"]["type"] == "ExternalName"]
    assert {s["metadata"]["name"] for s in external} == {"redis", "postgres"}
    assert all("selector" not in s["spec"] for s in external)  # a DNS alias selects no pods


def test_policy_configmap_and_secret_are_the_ones_mounted(
    objects: list[dict[str, Any]], tmp_path: Path
) -> None:
    (deploy,) = by_kind(objects, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (config,) = by_kind(objects, "ConfigMap")
    assert volumes["policy"]["configMap"]["name"] == config["metadata"]["name"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(config["data"]["policy.yaml"])
    assert load_policy(policy).state.url.startswith("redis://redis:")  # the ExternalName
    (secret,) = by_kind(objects, "Secret")
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    for name in ("ROUTEGATE_MASTER_KEY", "ROUTEGATE_LOG_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["data"]
