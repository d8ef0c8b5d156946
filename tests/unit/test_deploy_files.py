"""deploy/compose.yaml, deploy/prometheus.yml and deploy/Dockerfile agree with each other and
with what the gateway expects (files only: `docker compose config` runs in
tests/system/test_compose_config.py, the image itself in tests/container)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_two_gateway_replicas_share_redis_and_postgres() -> None:
    services = compose()["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway-")}
    assert len(gateways) == 2
    replicas = []
    for name, gateway in gateways.items():
        args = gateway["command"]
        assert args[args.index("--log") + 1].startswith("postgresql://")
        assert "@postgres:5432/" in args[args.index("--log") + 1]
        replicas.append(args[args.index("--replica") + 1])
        mounts = [v for v in gateway["volumes"] if v.endswith(":/etc/routegate/policy.yaml:ro")]
        assert mounts == ["./policies/fleet.yaml:/etc/routegate/policy.yaml:ro"], name
        # The compose stop grace must outlast the drain (grace, then in-flight requests).
        drain = float(args[args.index("--drain-timeout") + 1])
        drain += float(args[args.index("--drain-grace") + 1])
        assert float(gateway["stop_grace_period"].rstrip("s")) > drain
        assert set(gateway["depends_on"]) >= {"redis", "postgres"}
    assert replicas == sorted(set(replicas)) and len(replicas) == 2
    assert {"redis", "postgres", "prometheus", "vllm-demo"} <= set(services)
    policy = yaml.safe_load((DEPLOY / "policies" / "fleet.yaml").read_text())
    assert policy["state"]["url"].startswith("redis://redis:")
    endpoints = [e for m in policy["models"].values() for e in m.get("endpoints", [])]
    assert endpoints and all(e.startswith("http://vllm-demo:") for e in endpoints)


def test_prometheus_scrapes_every_gateway() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:8080" for name in services if name.startswith("gateway-")}
    assert job["authorization"]["credentials_file"] == "/tmp/metrics-token"
    assert "/tmp/metrics-token" in services["prometheus"]["command"][0]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.M)
    stages = re.findall(r"^FROM \$\{BASE\}( AS \w+)?$", text, re.M)
    assert stages == [" AS builder", ""]
    final = text.rsplit("\nFROM ", 1)[1]
    assert "build-essential" not in final and "apt-get install" not in final
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*ROUTEGATE_READYZ_URL", final, re.M)
    assert '"--policy", "/etc/routegate/policy.yaml"' in final
    ignore = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # an allow-list: nothing unlisted is sent
