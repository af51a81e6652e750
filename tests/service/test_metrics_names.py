"""The shipped dashboard and scrape config name only metrics the service serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from saft_service import db, metrics
from saft_service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def served_names(tmp_path: Path) -> set[str]:
    """Family names of every saft_ metric: those counted in a process and those read from a (new) store."""
    settings = Settings(data_dir=tmp_path)
    db.upgrade(settings)
    try:
        families = [*metrics.REGISTRY.collect(), *metrics.StoreCollector(settings).collect()]
    finally:
        db.get_engine(settings).dispose()
    return {f.name for f in families if f.name.startswith("saft_")}


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_metric_the_dashboard_plots_is_served(tmp_path: Path) -> None:
    served = served_names(tmp_path)
    assert {"saft_jobs", "saft_queue_depth", "saft_tenant_storage_bytes", "saft_store_up"} <= served  # from the store
    dashboard = json.loads((REPO / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {family(n) for e in exprs for n in re.findall(r"\bsaft_[a-z_]+", e)}
    assert used and used <= served, used - served
    assert served <= used, f"no panel shows {served - used}"


def test_the_scrape_config_scrapes_the_api_and_the_worker() -> None:
    config = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["saft-api"]["static_configs"][0]["targets"] == ["api:8000"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    port = compose["services"]["worker"]["environment"]["SAFT_WORKER_METRICS_PORT"]
    assert jobs["saft-worker"]["static_configs"][0]["targets"] == [f"worker:{port}"]
    mounted = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounted
