"""``docker-compose.yml`` is checked offline: no Docker engine runs where the tests do.

It must be a valid Compose file (the Compose specification vendored by check-jsonschema), and
what it says must match the code: the topics it creates are the ones the settings name (the
published ones compacted, the dead letters with room for large records), every
``TOWERSTREAM_*`` variable is a setting with a valid value, and every towerstream command is
one the CLI parses. Then a renamed setting or a new topic cannot leave the stack behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from towerstream.cli import build_parser
from towerstream.events.deadletter import MAX_RECORD_BYTES
from towerstream.settings import COMPACTED_TOPICS, TOPIC_NAMES, Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return doc


def _towerstream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("build")}


def test_valid_against_the_compose_specification() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_topics_are_the_settings_topics(compose: dict[str, Any]) -> None:
    script = "\n".join(compose["services"]["topic-init"]["command"])
    created: dict[str, list[str]] = {}
    for line in script.splitlines():
        m = re.search(r"--topic\s+(\S+)(.*)", line)
        if m:
            created[m.group(1)] = re.findall(r"--config\s+(\S+)", m.group(2))
    s = Settings()
    assert set(created) == {s.topic(n) for n in TOPIC_NAMES}
    compacted = {t for t, cfg in created.items() if "cleanup.policy=compact" in cfg}
    assert compacted == {s.topic(n) for n in COMPACTED_TOPICS}
    assert f"max.message.bytes={MAX_RECORD_BYTES}" in created[s.topic("dead-letters")]
    assert "--partitions 4" in script and s.topic_partitions == 4


def test_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    for name, svc in _towerstream_services(compose).items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        assert env, name
        unknown = [k for k in env if not k.startswith("TOWERSTREAM_") or k[12:].lower() not in fields]
        assert not unknown, f"{name}: not settings: {unknown}"
        settings = Settings(**{k[12:].lower(): v for k, v in env.items()})  # validates every value
        assert settings.kafka_bootstrap == "kafka:19092", name
        # The published port and the healthcheck reach the port the service listens on.
        assert any(str(p).endswith(f":{settings.web_port}") for p in svc["ports"]), name
        assert f":{settings.web_port}/healthz" in " ".join(svc["healthcheck"]["test"]), name


def test_one_trainer_and_two_replicas_with_real_commands(compose: dict[str, Any]) -> None:
    parser = build_parser()
    commands: dict[str, str] = {}
    for name, svc in _towerstream_services(compose).items():
        argv = svc["command"]
        assert argv[0] == "towerstream", name
        commands[name] = parser.parse_args(argv[1:]).command
    assert sorted(commands.values()) == ["serve", "serve", "train"]
    trainer = next(n for n, c in commands.items() if c == "train")
    svc = compose["services"][trainer]
    assert svc["environment"].get("TOWERSTREAM_ROLE", "train") == "train"
    assert any(v.endswith(":/data") for v in svc["volumes"]), "the trainer's state must outlive its container"
    # Each replica is reachable on a host port of its own.
    host_ports = [str(p).split(":")[0] for n, c in commands.items() if c == "serve"
                  for p in compose["services"][n]["ports"]]
    assert len(set(host_ports)) == 2


# ----- Prometheus and Grafana ----------------------------------------------------------------------
DEPLOY = COMPOSE.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "towerstream.json"


def _bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the repository file or folder bound there (``./x:/y[:ro]``)."""
    out = {}
    for v in svc.get("volumes") or []:
        parts = str(v).split(":")
        if parts[0].startswith("./"):
            out[parts[1]] = COMPOSE.parent / parts[0]
    return out


def test_prometheus_scrapes_the_trainer_and_every_replica(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    mounts = _bind_mounts(prom)
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert config_path in mounts and mounts[config_path].is_file(), mounts
    config = YAML(typ="safe").load(mounts[config_path].read_text())
    jobs = {j["job_name"]: {t for sc in j["static_configs"] for t in sc["targets"]} for j in config["scrape_configs"]}
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in config["scrape_configs"])
    parser = build_parser()
    want: dict[str, set[str]] = {"trainer": set(), "replicas": set()}
    for name, svc in _towerstream_services(compose).items():
        env = {k[12:].lower(): str(v) for k, v in (svc.get("environment") or {}).items()}
        job = "trainer" if parser.parse_args(svc["command"][1:]).command == "train" else "replicas"
        want[job].add(f"{name}:{Settings(**env).web_port}")  # type: ignore[arg-type]
    assert jobs == want


def test_grafana_has_prometheus_and_the_dashboard_provisioned(compose: dict[str, Any]) -> None:
    graf = compose["services"]["grafana"]
    mounts = _bind_mounts(graf)
    prov = mounts["/etc/grafana/provisioning"]
    sources = YAML(typ="safe").load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    prom_port = compose["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert [(d["type"], d["url"]) for d in sources] == [("prometheus", f"http://prometheus:{prom_port}")]
    providers = YAML(typ="safe").load((prov / "dashboards" / "towerstream.yml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    assert mounts[folder].resolve() == DASHBOARD.parent.resolve()
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{folder}/{DASHBOARD.name}"
    import json

    dash = json.loads(DASHBOARD.read_text())
    uids = {d["uid"] for d in sources}
    targets = [t for p in dash["panels"] for t in p.get("targets", [])]
    assert targets and all(t["datasource"]["uid"] in uids and t["expr"] for t in targets)
    # The six subjects each have a panel.
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for subject in ("throughput", "lag", "freshness", "latency", "hit rate", "dead letters"):
        assert subject in titles, subject
