"""The deploy files an operator uses as they are: the Dockerfile, the compose stack, the Grafana
and Prometheus files and the Kubernetes manifests parse, reference only images, ports, STREAMER_*
names, metrics and paths that exist in the project, and agree with the README's settings table."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer import bench
from streamer.config import Settings
from streamer.metrics import Metrics
from tests.deploy.conftest import DEPLOY
from tests.helpers import readme_table

ROOT = DEPLOY.parent
K8S = DEPLOY / "k8s"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def settings_from(env: dict[str, Any]) -> Settings:
    """Build Settings from STREAMER_* names exactly as the daemon would read them (validates values)."""
    fields = {}
    for name, value in env.items():
        assert name.startswith("STREAMER_"), name
        field = name.removeprefix("STREAMER_").lower()
        assert field in Settings.model_fields, f"{name} is not a setting of the daemon"
        fields[field] = str(value)
    return Settings.model_validate(fields)


def dockerfile_stages() -> list[list[str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


# ------------------------------------------------------------------ the image
def test_dockerfile_is_multi_stage_slim_non_root_with_healthcheck_and_entrypoint():
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert "slim" in final[0]
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in final)
    assert any(line.replace(" ", "") == 'ENTRYPOINT["streamer","run"]' for line in final)
    assert not any(re.search(r"\b(apt-get|gcc|build-essential|pip install)\b", line) for line in final), \
        "no build tools or installs in the final stage"
    assert any("COPY --from=" in line for line in final)


def test_dockerfile_pins_the_projects_torch_and_copies_paths_that_exist():
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("torch"))
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pinned.split('==')[1]}" in text
    assert "download.pytorch.org/whl/cpu" in text  # the CPU build, not the CUDA one
    ignore = (ROOT / ".dockerignore").read_text().split()
    for line in dockerfile_stages()[0]:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f"{src} is excluded by .dockerignore"
    assert "EXPOSE 9100" in text


# ------------------------------------------------------------------ compose
def test_compose_services_images_and_settings():
    c = compose()
    services = c["services"]
    assert {"kafka", "topics", "streamer", "replay", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")  # the official image
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    daemon = services["streamer"]
    assert daemon["deploy"]["replicas"] == 2
    assert (ROOT / "deploy" / daemon["build"]["context"]).resolve() == ROOT
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).exists()
    assert services["replay"]["image"] == daemon["image"]
    s = settings_from(daemon["environment"])
    assert s.bootstrap_servers == "kafka:9092"
    settings_from(services["replay"]["environment"])


def test_compose_topics_match_the_daemon_and_are_co_partitioned():
    c = compose()
    s = settings_from(c["services"]["streamer"]["environment"])
    script = c["services"]["topics"]["command"][0]
    loop = re.search(r"for topic in ([\w\- ]+); do", script)
    assert loop
    created = set(loop.group(1).split()) | set(re.findall(r"--topic (\w[\w\-]*)", script))
    changelog = s.changelog_topic or s.changelog()
    assert {s.input_topic, s.output_topic, s.dlq_topic, changelog} <= created
    assert re.search(rf"--topic {changelog} .*cleanup.policy=compact", script.replace("\\\n", " "))
    assert set(re.findall(r"--partitions (\d+)", script)) == {"4"}  # the changelog mirrors the input


def test_compose_replay_job_reads_a_packaged_dataset_that_exists():
    args = compose()["services"]["replay"]["command"]
    df = bench.read_table(args[0])
    series = args[args.index("--series") + 1].split(",")
    assert set(series) <= set(df.columns) and args[args.index("--time-column") + 1] in df.columns
    daemon_env = compose()["services"]["streamer"]["environment"]
    assert args[args.index("--topic") + 1] == settings_from(daemon_env).input_topic


def test_compose_mounts_exist_and_ports_agree():
    c = compose()
    for name in ("prometheus", "grafana"):
        for vol in c["services"][name]["volumes"]:
            src = vol.split(":")[0]
            assert (DEPLOY / src).exists(), f"{name} mounts {src}, which is not in deploy/"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "streamer")
    port = int(c["services"]["streamer"]["environment"]["STREAMER_METRICS_PORT"])
    assert job["dns_sd_configs"][0]["port"] == port == Settings.model_fields["metrics_port"].default
    assert job["dns_sd_configs"][0]["names"] == ["streamer"]  # the compose service name
    mounted = {v.split(":")[1] for v in c["services"]["prometheus"]["volumes"]}
    assert {f"/etc/prometheus/{f}" for f in prom["rule_files"]} <= mounted


# ------------------------------------------------------------------ Grafana and Prometheus
def exported_metrics() -> set[str]:
    """Every series name the daemon's registry can export, labelled families without children included."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", Metrics("sgd", "lstm", "0").exposition().decode(), re.M):
        suffixes = ("", "_bucket", "_sum", "_count") if kind == "histogram" else ("",)
        names |= {name + suffix for suffix in suffixes}
    return names


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\b(streamer_[a-z_]+)", text))


def test_dashboard_and_rules_use_only_metrics_the_daemon_exports():
    exported = exported_metrics()
    dash = (DEPLOY / "grafana" / "dashboards" / "streamer.json").read_text()
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    for where, text in (("dashboard", dash), ("alert rules", rules)):
        unknown = {m for m in used_metrics(text) if m not in exported}
        assert not unknown, f"{where} uses metrics the daemon does not export: {unknown}"


def test_dashboard_covers_what_operators_watch_and_is_provisioned():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "streamer.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for metric in ("streamer_ticks_consumed_total", "streamer_tick_to_prediction_seconds_bucket",
                   "streamer_update_seconds_bucket", "streamer_consumer_lag", "streamer_live_keys",
                   "streamer_dead_letters_total", "streamer_model_resets_total", "streamer_prequential_mse",
                   "streamer_interval_coverage", "streamer_rebalances_total", "streamer_horizon_mse",
                   "streamer_horizon_coverage"):
        assert metric in exprs, metric
    assert "by (le, learner)" in exprs and "by (reason)" in exprs
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["uid"] == dash["templating"]["list"][0]["current"]["value"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamer.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


# ------------------------------------------------------------------ Kubernetes
def test_k8s_deployment_probes_resources_config_and_secret():
    docs = k8s_docs()
    dep = docs["Deployment/streamer"]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == compose()["services"]["streamer"]["image"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    config = docs[f"ConfigMap/{container['envFrom'][0]['configMapRef']['name']}"]["data"]
    s = settings_from(config)
    assert port == s.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_env) == {"STREAMER_SASL_USERNAME", "STREAMER_SASL_PASSWORD"}
    assert not any("PASSWORD" in k for k in config), "credentials belong in the Secret, not the ConfigMap"
    example = docs["Secret/streamer-kafka"]
    assert {ref["name"] for ref in secret_env.values()} == {example["metadata"]["name"]}
    assert {ref["key"] for ref in secret_env.values()} <= set(example["stringData"])
    # SASL_SSL is complete once the Secret is there (the CA file itself lives in the cluster)
    security = settings_from({**config, **{k: "x" for k in secret_env}}).model_copy(
        update={"ssl_cafile": None}).kafka_security()
    assert security["security_protocol"] == "SASL_SSL" and security["ssl_context"].check_hostname
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(s.spill_path or "/tmp").parent) in mounts  # the root filesystem is read-only
    assert str(Path(s.ssl_cafile or "").parent) in mounts


def test_k8s_service_monitor_and_rules_select_the_pods():
    docs = k8s_docs()
    labels = docs["Deployment/streamer"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service/streamer", "PodMonitor/streamer"):
        sel = docs[kind]["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= labels.items(), kind
    pm = docs["PodMonitor/streamer"]["spec"]
    assert labels[pm["jobLabel"]] == "streamer"  # job="streamer", as the alert rules expect
    assert pm["podMetricsEndpoints"][0]["port"] == "metrics"
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    assert docs["PrometheusRule/streamer"]["spec"]["groups"] == shipped
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).exists(), res
    assert "secret.example.yaml" not in kust["resources"]


def test_every_streamer_name_in_deploy_is_in_the_readme_table():
    table = readme_table()
    text = " ".join(p.read_text() for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ""))
    text += (DEPLOY / "Dockerfile").read_text()
    names = set(re.findall(r"\bSTREAMER_([A-Z0-9_]+)\b", text))
    assert names, "no settings found"
    missing = {n for n in names if n.lower() not in table}
    assert not missing, f"deploy uses settings missing from the README table: {missing}"


@pytest.mark.parametrize("path", sorted(p.relative_to(DEPLOY).as_posix()
                                        for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")))
def test_every_deploy_file_parses(path):
    text = (DEPLOY / path).read_text()
    docs = [json.loads(text)] if path.endswith(".json") else [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs
