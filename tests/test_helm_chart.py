"""The Helm chart (deploy/helm/serving), offline: every values file renders, lints strictly and
gives manifests Kubernetes 1.32 accepts; the config it writes is one the project loads; bad
values fail at render; GPU workers ask for GPUs; a chat pool gets its pool router and RBAC.

Rendering is Helm's own (helm-python-sdk, the Helm SDK in a wheel), so `helm install` would
see the same manifests; nothing here contacts a cluster.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from serving.config import ConfigError, load_catalog, load_config
from serving.config.catalog import Modality
from serving.config.deployment import Config, RouterConfig, Routing, WorkerConfig
from serving.config.loader import deep_merge
from serving.config.plan import check_plan, memory_plan
from serving.launcher.vllm import vllm_worker

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "serving"
KUBE_VERSION = "1.32.0"
VALUES_FILES = ["values.yaml", "values-single-node.yaml", "values-fleet.yaml"]
NAMESPACE = "ai"

# The fleet with the chart's single-pod stores instead of managed ones.
DEV_STORES: dict[str, Any] = {
    "database": {"url": "", "dev": {"enabled": True}},
    "rateLimitStore": {"url": "", "dev": {"enabled": True}},
    "artifacts": {"url": "", "credentialsSecret": "", "dev": {"enabled": True}},
}

# The Grafana dashboard as a ConfigMap for Grafana's sidecar, in a folder of its own.
GRAFANA: dict[str, Any] = {"grafanaDashboard": {
    "enabled": True, "annotations": {"grafana_folder": "Serving"}}}
DASHBOARD = CHART / "dashboards" / "serving.json"

Manifest = dict[str, Any]


def values_of(values_file: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `helm install -f FILE --set ...` passes on top of the chart's own values.yaml."""
    values: dict[str, Any] = {}
    if values_file != "values.yaml":
        deep_merge(values, yaml.safe_load((CHART / values_file).read_text()))
    return deep_merge(values, overrides or {})


def merged_values(values_file: str, overrides: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The values a release uses: the chart's values.yaml with the file and overrides over it
    (maps merge key by key, as Helm merges them)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return deep_merge(defaults, values_of(values_file, overrides))


def render_values(values: dict[str, Any], release: str = "serving") -> list[Manifest]:
    """The manifests `helm install` would apply (NOTES.txt left out)."""
    chart = helm.Chart.load(CHART)
    try:
        files = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    return [doc for name, text in sorted(files.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def render(values_file: str = "values.yaml", overrides: dict[str, Any] | None = None
           ) -> list[Manifest]:
    return render_values(values_of(values_file, overrides))


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def names(manifests: list[Manifest], kind: str) -> set[str]:
    return {m["metadata"]["name"] for m in manifests if m["kind"] == kind}


def container(deployment: Manifest) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def rendered_config(manifests: list[Manifest], tmp_path: Path) -> Path:
    """The ConfigMap's config.yaml as a file, its catalog_dir (/app/models in the image)
    pointed at this checkout's models/."""
    text = find(manifests, "ConfigMap", "serving-config")["data"]["config.yaml"]
    data = yaml.safe_load(text)
    assert data["catalog_dir"] == "/app/models"
    data["catalog_dir"] = str(ROOT / "models")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def pool_router_args(deployment: Manifest) -> tuple[list[str], Any]:
    """The pool router's command and its arguments as the engine's own parser reads them."""
    c = container(deployment)
    command, args = c["command"], c["args"]
    if command == ["vllm-router"]:
        from vllm_router.launch_router import parse_router_args
    else:
        assert command == ["smg", "launch"]
        from smg.launch_router import parse_router_args
    return command, parse_router_args(args)


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lints_strictly(values_file: str):
    report = helm.lint(CHART, values_of(values_file), strict=True,
                       kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is information ("icon is recommended"); 2 and up are warnings and errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values_file, overrides", [
    *((f, None) for f in VALUES_FILES),
    ("values-fleet.yaml", DEV_STORES),
    ("values.yaml", GRAFANA),
], ids=[*VALUES_FILES, "fleet-dev-stores", "grafana-dashboard"])
def test_every_manifest_is_valid_kubernetes(values_file: str, overrides: dict | None):
    manifests = render(values_file, overrides)
    assert manifests
    for manifest in manifests:
        # Strict: an unknown or misplaced field fails, not only a wrong type.
        kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def test_the_validator_catches_a_misplaced_field():
    router = copy.deepcopy(find(render(), "Deployment", "serving-router"))
    router["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(router, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("values_file, overrides", [
    *((f, None) for f in VALUES_FILES),
    ("values-fleet.yaml", DEV_STORES),
], ids=[*VALUES_FILES, "fleet-dev-stores"])
def test_the_config_map_holds_a_config_the_project_loads(
        values_file: str, overrides: dict | None, tmp_path: Path):
    manifests = render(values_file, overrides)
    config = load_config([rendered_config(manifests, tmp_path)])
    assert set(config.workers) == set(merged_values(values_file, overrides)["config"]["workers"])
    services = names(manifests, "Service")
    for worker in config.workers.values():
        # Each worker is reached at one Service of this release, in its namespace.
        (url,) = worker.endpoints
        match = re.fullmatch(rf"http://([a-z0-9-]+)\.{NAMESPACE}\.svc:8000", url)
        assert match and match.group(1) in services, url
        assert worker.replicas == 1  # replicas are the Deployment's, not `serving up`'s
    assert config.router.host == "0.0.0.0" and config.router.port == 8000


def on_this_node(config: Config, names: list[str] | None = None) -> Config:
    """`config` as the node that runs its workers' pods sees them: the chart points every
    worker at its Service (`endpoints`), which the memory plan counts as elsewhere."""
    return config.model_copy(update={"workers": {
        name: worker.model_copy(update={"endpoints": []})
        for name, worker in config.workers.items() if names is None or name in names}})


def test_single_node_mirrors_the_h100_config_and_its_memory_plan_fits(tmp_path: Path):
    manifests = render("values-single-node.yaml")
    config = load_config([rendered_config(manifests, tmp_path)])
    h100 = load_config([ROOT / "configs" / "gpu-h100.yaml"])
    assert config.gpu == h100.gpu
    assert set(config.workers) == set(h100.workers)
    for name, worker in config.workers.items():
        theirs = h100.workers[name]
        for field in ("model", "engine_args", "gpus", "env", "max_in_flight"):
            assert getattr(worker, field) == getattr(theirs, field), (name, field)
    plans = memory_plan(on_this_node(config), devices=[])
    check_plan(plans)
    assert {row.worker for plan in plans for row in plan.rows} == {
        "chat", "images", "videos", "transcription"}


def test_fleet_each_gpu_worker_fits_the_gpu_of_its_own(tmp_path: Path):
    """In the fleet every worker pod has a GPU to itself: plan each worker alone."""
    config = load_config([rendered_config(render("values-fleet.yaml"), tmp_path)])
    on_gpu = set()
    for name in config.workers:
        plans = memory_plan(on_this_node(config, [name]), devices=[])
        check_plan(plans)
        on_gpu |= {row.worker for plan in plans for row in plan.rows}
    assert on_gpu == {"chat", "images", "videos", "transcription"}


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_chat_workers_are_exactly_the_chat_models(values_file: str):
    """`kind: chat` (which gives a pool its router) must match the catalog's modality."""
    catalog = load_catalog(ROOT / "models")
    manifests = render(values_file)
    values = merged_values(values_file)
    for name, worker in values["config"]["workers"].items():
        deployment = find(manifests, "Deployment", f"serving-worker-{name}")
        is_chat = catalog[worker["model"]].modality == Modality.chat
        kind = values["workers"].get(name, {}).get("kind", values["workerDefaults"]["kind"])
        assert (kind == "chat") == is_chat, (name, kind)
        assert container(deployment)["command"][:3] == ["serving", "worker", name]


def test_a_disabled_worker_has_no_pods_and_no_endpoint(tmp_path: Path):
    manifests = render("values-single-node.yaml",
                       {"config": {"workers": {"videos": {"enabled": False}}}})
    assert "serving-worker-videos" not in names(manifests, "Deployment")
    assert "serving-worker-videos" not in names(manifests, "Service")
    config = load_config([rendered_config(manifests, tmp_path)])
    assert set(config.workers) == {"chat", "images", "transcription", "speech"}


def test_gpu_workers_request_and_limit_their_gpus():
    manifests = render("values-single-node.yaml")
    for name in ("chat", "images", "videos", "transcription"):
        resources = container(find(manifests, "Deployment", f"serving-worker-{name}"))[
            "resources"]
        assert resources["requests"]["nvidia.com/gpu"] == 1
        assert resources["limits"]["nvidia.com/gpu"] == 1
    speech = container(find(manifests, "Deployment", "serving-worker-speech"))["resources"]
    assert "nvidia.com/gpu" not in speech["requests"]
    assert "nvidia.com/gpu" not in speech["limits"]
    router = container(find(manifests, "Deployment", "serving-router"))["resources"]
    assert "nvidia.com/gpu" not in router["requests"]


def test_worker_pods_probe_health_and_cache_models_on_a_volume():
    manifests = render("values-single-node.yaml")
    pvc = find(manifests, "PersistentVolumeClaim", "serving-model-cache")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    for name in ("chat", "images", "videos", "transcription", "speech"):
        deployment = find(manifests, "Deployment", f"serving-worker-{name}")
        pod = deployment["spec"]["template"]["spec"]
        c = container(deployment)
        assert c["command"] == ["serving", "worker", name, "-c", "/etc/serving/config.yaml",
                                "--host", "0.0.0.0", "--port", "8000"]
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
        # Downloads on first start: at least half an hour before the pod is given up on.
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
        # A deleted pod drains before it stops, within its grace period.
        drain = prestop_drain(c)
        assert 0 < drain < pod["terminationGracePeriodSeconds"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["SERVING_CACHE_DIR"] == "/var/cache/serving"
        assert env["HF_HOME"] == "/var/cache/serving/huggingface"
        cache = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")
        assert cache["mountPath"] == "/var/cache/serving"
        volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        assert volume["persistentVolumeClaim"]["claimName"] == "serving-model-cache"


def test_fleet_runs_a_chat_pool_behind_its_pool_router(tmp_path: Path):
    manifests = render("values-fleet.yaml")
    chat = find(manifests, "Deployment", "serving-worker-chat")
    assert chat["spec"]["replicas"] == 2
    pod_labels = chat["spec"]["template"]["metadata"]["labels"]
    # One chat replica a node.
    anti = chat["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    pool = find(manifests, "Deployment", "serving-pool-chat")
    command, args = pool_router_args(pool)
    assert command == ["smg", "launch"]
    assert args.policy == "cache_aware"
    assert args.service_discovery and args.service_discovery_port == 8000
    assert args.service_discovery_namespace == NAMESPACE
    # The selector picks the chat pods, and only them.
    assert args.selector.items() <= pod_labels.items()
    for other in ("images", "videos", "transcription", "speech"):
        labels = find(manifests, "Deployment", f"serving-worker-{other}")["spec"]["template"][
            "metadata"]["labels"]
        assert not args.selector.items() <= labels.items()
    pool_labels = pool["spec"]["template"]["metadata"]["labels"]
    assert not args.selector.items() <= pool_labels.items()
    probes = container(pool)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readiness"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/liveness"

    # RBAC: the pool router's account may list and watch pods in the namespace, nothing else.
    account = pool["spec"]["template"]["spec"]["serviceAccountName"]
    find(manifests, "ServiceAccount", account)
    role = find(manifests, "Role", account)
    (rule,) = role["rules"]
    assert rule["resources"] == ["pods"] and set(rule["verbs"]) == {"get", "list", "watch"}
    binding = find(manifests, "RoleBinding", account)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": account}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                    "namespace": NAMESPACE}]

    # The router reaches the pool through the pool router's Service.
    service = find(manifests, "Service", "serving-pool-chat")
    assert service["spec"]["selector"].items() <= pool_labels.items()
    config = load_config([rendered_config(manifests, tmp_path)])
    assert config.workers["chat"].endpoints == [f"http://serving-pool-chat.{NAMESPACE}.svc:8000"]
    assert config.workers["images"].endpoints == [
        f"http://serving-worker-images.{NAMESPACE}.svc:8000"]
    # The pool router's cache_aware policy tokenises through vLLM's render endpoints, which
    # the chat replicas serve only with --enable-scale-out; `serving worker chat` passes it on.
    assert config.workers["chat"].args.extra_args.count("--enable-scale-out") == 1
    spec = vllm_worker("chat", config.workers["chat"], config, Path("/models/chat"))
    assert "--enable-scale-out" in spec.argv
    assert "--enable-scale-out" not in config.workers["images"].engine_args.get("extra_args", [])
    # Media workers get no pool router.
    assert names(manifests, "Deployment") == {
        "serving-router", "serving-pool-chat", *(f"serving-worker-{n}" for n in (
            "chat", "images", "videos", "transcription", "speech"))}


def test_single_replica_chat_has_no_pool_router():
    manifests = render("values-single-node.yaml")
    assert "serving-pool-chat" not in names(manifests, "Deployment")
    assert not names(manifests, "Role") and not names(manifests, "ServiceAccount")


def test_pool_router_defaults_are_the_configs_routing_defaults():
    """With no `routing` block the pool router gets serving.config's Routing defaults."""
    values = values_of("values-fleet.yaml")
    del values["config"]["workers"]["chat"]["routing"]
    manifests = render_values(values)
    command, args = pool_router_args(find(manifests, "Deployment", "serving-pool-chat"))
    routing = Routing()
    assert command == ["smg", "launch"] and routing.engine == "smg"
    assert args.policy == routing.policy
    assert args.cache_threshold == routing.cache_threshold
    assert args.balance_abs_threshold == routing.balance_abs_threshold
    assert args.balance_rel_threshold == routing.balance_rel_threshold
    assert args.health_check_interval_secs >= routing.health_check_interval_s


def test_pool_routing_settings_reach_the_engine():
    routing = {"policy": "power_of_two", "engine": "smg", "cache_threshold": 0,
               "balance_abs_threshold": 0, "balance_rel_threshold": 2.5,
               "health_check_interval_s": 0.5}
    manifests = render("values-fleet.yaml", {"config": {"workers": {"chat": {
        "routing": routing}}}})
    command, args = pool_router_args(find(manifests, "Deployment", "serving-pool-chat"))
    assert command == ["smg", "launch"]
    assert args.policy == "power_of_two"
    # Zero is a setting, not "unset".
    assert args.cache_threshold == 0 and args.balance_abs_threshold == 0
    assert args.balance_rel_threshold == 2.5
    # The engines take whole seconds; the chart rounds up, never to 0.
    assert args.health_check_interval_secs == 1


@pytest.mark.parametrize("engine", ["smg", "vllm-router"])
def test_either_pool_router_follows_the_pools_pods(engine: str):
    """Service discovery, as the engine's own parser reads the chart's arguments: the pool's
    ready pods in the release's namespace, on the worker's port (each engine adds a pod when it
    is ready and drops it once it is marked for deletion)."""
    manifests = render("values-fleet.yaml", {"config": {"workers": {"chat": {
        "routing": {"engine": engine}}}}})
    command, args = pool_router_args(find(manifests, "Deployment", "serving-pool-chat"))
    assert command[0] == engine
    assert args.service_discovery
    assert (args.service_discovery_namespace, args.service_discovery_port) == (NAMESPACE, 8000)
    chat = find(manifests, "Deployment", "serving-worker-chat")
    assert args.selector.items() <= chat["spec"]["template"]["metadata"]["labels"].items()
    assert container(chat)["ports"][0]["containerPort"] == 8000


def test_router_runs_serving_router_with_its_config_and_probes():
    manifests = render("values-fleet.yaml")
    router = find(manifests, "Deployment", "serving-router")
    c = container(router)
    assert c["command"] == ["serving", "router", "-c", "/etc/serving/config.yaml",
                            "--host", "0.0.0.0", "--port", "8000", "--watch-config"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    pod = router["spec"]["template"]["spec"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == "serving-config"
    assert {"name": "config", "mountPath": "/etc/serving", "readOnly": True} in c[
        "volumeMounts"]
    # The HPA owns the replica count; the PDB and Service select the router's pods.
    assert "replicas" not in router["spec"]
    hpa = find(manifests, "HorizontalPodAutoscaler", "serving-router")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "serving-router"
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in c["resources"]["requests"]  # utilization is measured against it
    labels = router["spec"]["template"]["metadata"]["labels"]
    pdb = find(manifests, "PodDisruptionBudget", "serving-router")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(manifests, "Service", "serving-router")
    assert service["spec"]["selector"].items() <= labels.items()
    # metrics_port in the config: served on its own port, without a key.
    assert {"name": "metrics", "port": 9100, "targetPort": "metrics"} in service["spec"][
        "ports"]
    # Keys and store credentials come from Secrets, never from the ConfigMap.
    secrets = {s["secretRef"]["name"] for s in c["envFrom"]}
    assert secrets == {"serving-keys", "serving-s3"}
    pg = next(e for e in c["env"] if e["name"] == "PGPASSWORD")
    assert pg["valueFrom"]["secretKeyRef"] == {"name": "serving-postgresql", "key": "password"}


def test_one_router_keeps_its_sqlite_state_on_a_volume():
    manifests = render("values-single-node.yaml")
    router = find(manifests, "Deployment", "serving-router")
    assert router["spec"]["replicas"] == 1
    assert router["spec"]["strategy"] == {"type": "Recreate"}
    pod = router["spec"]["template"]["spec"]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state["persistentVolumeClaim"]["claimName"] == "serving-router"
    find(manifests, "PersistentVolumeClaim", "serving-router")
    assert "serving-router" not in names(manifests, "HorizontalPodAutoscaler")


def test_a_release_with_no_key_generates_an_admin_key_secret():
    manifests = render("values-single-node.yaml")
    secret = find(manifests, "Secret", "serving-api-keys")
    assert set(secret["data"]) == {"SERVING_ADMIN_KEYS"}
    envfrom = container(find(manifests, "Deployment", "serving-router"))["envFrom"]
    assert {"secretRef": {"name": "serving-api-keys"}} in envfrom


def test_dev_stores_are_wired_into_the_config(tmp_path: Path):
    manifests = render("values-fleet.yaml", DEV_STORES)
    config = load_config([rendered_config(manifests, tmp_path)])
    assert config.router.database == (
        f"postgresql://serving@serving-postgresql.{NAMESPACE}.svc:5432/serving")
    assert config.router.rate_limit_store == f"redis://serving-redis.{NAMESPACE}.svc:6379/0"
    assert config.router.artifacts == "s3://serving/videos"
    assert config.router.artifacts_endpoint == f"http://serving-s3.{NAMESPACE}.svc:8333"
    assert {"serving-postgresql", "serving-s3"} <= names(manifests, "StatefulSet")
    assert "serving-redis" in names(manifests, "Deployment")
    for service in ("serving-postgresql", "serving-redis", "serving-s3"):
        find(manifests, "Service", service)
    s3 = container(find(manifests, "StatefulSet", "serving-s3"))
    assert s3["command"][:2] == ["weed", "mini"] and "-bucket=serving" in s3["command"]
    router = container(find(manifests, "Deployment", "serving-router"))
    pg = next(e for e in router["env"] if e["name"] == "PGPASSWORD")
    assert pg["valueFrom"]["secretKeyRef"]["name"] == "serving-postgresql"
    assert {"secretRef": {"name": "serving-s3"}} in router["envFrom"]


def test_the_redis_password_comes_from_a_secret_not_the_config_map():
    secret = {"name": "serving-redis", "key": "redis-password"}
    manifests = render("values-fleet.yaml", {"rateLimitStore": {"passwordSecret": secret}})
    router = find(manifests, "Deployment", "serving-router")
    kubernetes_validate.validate(router, KUBE_VERSION, strict=True)
    redis_password = next(e for e in container(router)["env"] if e["name"] == "REDIS_PASSWORD")
    assert redis_password["valueFrom"]["secretKeyRef"] == secret
    text = find(manifests, "ConfigMap", "serving-config")["data"]["config.yaml"]
    store = yaml.safe_load(text)["router"]["rate_limit_store"]
    assert store == "redis://redis.databases.svc:6379/0"  # no password in the URL
    assert "serving-redis" not in text and "REDIS_PASSWORD" not in text
    # No secret named, or no Redis of yours (the dev one has no password): no variable.
    for overrides in ({}, {**DEV_STORES, "rateLimitStore": {
            "url": "", "dev": {"enabled": True}, "passwordSecret": secret}}):
        router = container(find(render("values-fleet.yaml", overrides), "Deployment",
                                "serving-router"))
        assert "REDIS_PASSWORD" not in {e["name"] for e in router["env"]}


@pytest.mark.parametrize("overrides, message", [
    ({"workers": {"chat": {"gpus": -1}}}, "gpus"),
    ({"modelCache": {"type": "nfs"}}, "type"),
    ({"router": {"replica": 2}}, "replica"),
    ({"config": {"workers": {"chat": {"routing": {"policy": "random"}}}}}, "policy"),
    ({"config": {"workers": {"Chat_2": {"model": "qwen2.5-7b-instruct"}}}}, "Chat_2"),
    ({"artifacts": {"url": "http://bucket"}}, "url"),
    ({"config": {"router": {"rate_limits": "redis://x"}}}, "rate_limits"),
    ({"config": {"workers": {"chat": {"max_inflight": 4}}}}, "max_inflight"),
    ({"rateLimitStore": {"passwordSecret": {"secret": "serving-redis"}}}, "secret"),
    ({"grafanaDashboard": {"enable": True}}, "enable"),
    ({"grafanaDashboard": {"labelValue": 1}}, "labelValue"),
], ids=["negative-gpus", "cache-type", "unknown-key", "routing-policy", "worker-name",
        "artifacts-url", "config-router-typo", "config-worker-typo", "redis-secret-typo",
        "grafana-typo", "grafana-label-not-a-string"])
def test_a_bad_value_fails_the_schema(overrides: dict, message: str):
    with pytest.raises(helm.HelmError, match=message):
        render("values-fleet.yaml", overrides)


def test_the_schema_knows_every_config_field_and_no_other():
    """The schema refuses unknown keys under `config` (a typo fails at render, not in a crash
    loop), so it must list exactly the fields of the project's config models."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    worker = config["properties"]["workers"]["additionalProperties"]
    for node, model in ((config, Config), (config["properties"]["router"], RouterConfig),
                        (worker, WorkerConfig), (worker["properties"]["routing"], Routing)):
        fields = {name for name, f in model.model_fields.items() if not f.exclude}
        assert set(node["properties"]) == fields, model.__name__
        assert node["additionalProperties"] is False


@pytest.mark.parametrize("overrides, message", [
    ({"config": {"workers": {"chat": {"replicas": 2}}}}, "set workers.chat.replicas"),
    ({"config": {"router": {"database": "postgresql://x@db/serving"}}},
     "config.router.database: set by database.url"),
    ({"workers": {"chaat": {"replicas": 2}}}, "workers.chaat: no such worker"),
    ({"router": {"autoscaling": {"enabled": False}, "replicas": 2},
      "database": {"url": ""}}, "more than one router pod"),
    ({"router": {"processes": 4}, "rateLimitStore": {"url": ""}}, "router.processes"),
    ({"apiKeys": {"existingSecret": ""}}, r"\$TEAM_A_KEY"),
    ({"database": {"dev": {"enabled": True}}}, "not both"),
    ({"config": {"workers": {"images": {"gpus": [1]}}}}, "config.workers.images.gpus: GPU 1"),
    ({"config": {"workers": {"speech": {"gpus": [0]}}}}, "config.workers.speech.gpus: GPU 0"),
    ({"workers": {"chat": {"terminationGracePeriodSeconds": 60}}},
     "workers.chat.terminationGracePeriodSeconds: 60, but the pod may drain for 120 s"),
])
def test_values_that_cannot_work_fail_with_what_to_change(overrides: dict, message: str):
    with pytest.raises(helm.HelmError, match=message):
        render("values-fleet.yaml", overrides)


def test_the_image_has_what_the_chart_runs(tmp_path: Path):
    """Dockerfile.gpu installs the project's dependencies (vllm-router and smg among them),
    and copies the catalog to /app/models, where the chart's catalog_dir points."""
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M)
    assert re.search(r"^COPY models \./models$", dockerfile, re.M)
    assert re.search(r"^COPY configs \./configs$", dockerfile, re.M)
    # Run the Dockerfile's own requirements step on this pyproject.toml.
    step = re.search(r'RUN (python3 -c ".*?") > /tmp/requirements\.txt', dockerfile, re.S)
    assert step
    command = step.group(1).replace("\\\n", "")
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    argv = shlex.split(command)
    argv[0] = sys.executable
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    requirements = out.splitlines()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(requirements) == {*project["dependencies"],
                                 *project["optional-dependencies"]["gpu"]}
    assert {"vllm-router==0.1.17", "smg==1.13.0"} <= set(requirements)


def test_a_config_error_in_the_chart_config_is_reported_by_the_loader(tmp_path: Path):
    """The ConfigMap check above can fail: a model the catalog lacks is refused."""
    manifests = render("values.yaml", {"config": {"workers": {"chat": {"model": "no-such"}}}})
    with pytest.raises(ConfigError, match="unknown model 'no-such'"):
        load_config([rendered_config(manifests, tmp_path)])


def pod_template(manifests: list[Manifest], name: str) -> Manifest:
    return find(manifests, "Deployment", name)["spec"]["template"]


@pytest.mark.parametrize("values_file", ["values-single-node.yaml", "values-fleet.yaml"])
def test_an_edit_rolls_only_the_worker_it_changes(values_file: str):
    """A worker's pods roll (a checksum of its own config in their template) only when its
    config changes; keys, limits and the other workers' settings reach the routers, which
    reload the ConfigMap in place (`--watch-config`) without new pods."""
    before = render(values_file)
    workers = {m["metadata"]["name"] for m in before if m["kind"] == "Deployment"
               and m["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"}
    chat = next(n for n in workers if n.endswith("-chat"))
    edited = render(values_file, {"config": {
        "router": {"default_limits": {"requests_per_minute": 7}},
        "workers": {"chat": {"max_in_flight": 17}}}})
    assert find(edited, "ConfigMap", "serving-config") != find(before, "ConfigMap",
                                                               "serving-config")
    assert pod_template(edited, "serving-router") == pod_template(before, "serving-router")
    for name in workers:
        changed = pod_template(edited, name) != pod_template(before, name)
        assert changed == (name == chat), name


def dashboards(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == "ConfigMap"
            and "grafana_dashboard" in m["metadata"]["labels"]]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_the_grafana_dashboard_is_off_by_default(values_file: str):
    assert dashboards(render(values_file)) == []


def test_the_grafana_dashboard_ships_for_the_sidecar_as_it_is_in_the_chart():
    """Enabled, one ConfigMap carries the sidecar's label and the dashboard file unchanged
    (Helm leaves its Grafana `{{endpoint}}` legends alone), in the release's namespace."""
    (configmap,) = dashboards(render("values-fleet.yaml", GRAFANA))
    meta = configmap["metadata"]
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/instance"] == "serving"
    assert meta["namespace"] == NAMESPACE
    assert meta["annotations"] == {"grafana_folder": "Serving"}
    (name, text), = configmap["data"].items()
    assert name == "serving.json"
    assert json.loads(text) == json.loads(DASHBOARD.read_text())
    assert "{{endpoint}}" in text
    # The sidecar's own label and a namespace of its own, where a Grafana watches another one.
    (moved,) = dashboards(render("values.yaml", {"grafanaDashboard": {
        "enabled": True, "label": "grafana_dashboard", "labelValue": "serving",
        "namespace": "monitoring"}}))
    assert moved["metadata"]["labels"]["grafana_dashboard"] == "serving"
    assert moved["metadata"]["namespace"] == "monitoring"


# The ScaledObject fields the chart may set, from KEDA's documentation (keda.sh/docs/2.16,
# "Scaling Deployments": ScaledObject spec; "Prometheus" scaler: trigger metadata).
KEDA_SPEC_FIELDS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback",
                    "advanced", "triggers"}
KEDA_TRIGGER_FIELDS = {"type", "name", "metadata", "metricType", "useCachedMetrics",
                       "authenticationRef"}
KEDA_PROMETHEUS_METADATA = {"serverAddress", "query", "threshold", "activationThreshold",
                            "namespace", "customHeaders", "ignoreNullValues", "queryParameters",
                            "unsafeSsl", "timeout"}


def keda_values(overrides: dict | None = None) -> list[Manifest]:
    return render("values-fleet.yaml", {"workerDefaults": {"autoscaling": {
        "mode": "keda", "minReplicas": 1, "maxReplicas": 6, **(overrides or {})}}})


def test_keda_scales_each_worker_on_its_own_signal():
    manifests = keda_values()
    scaled = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "ScaledObject"}
    workers = names(manifests, "Deployment") - {"serving-router", "serving-pool-chat"}
    assert set(scaled) == set(workers) and scaled
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        assert set(spec) <= KEDA_SPEC_FIELDS
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": name}
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 6)
        # KEDA owns the replica count: the Deployment sets none (it would fight the HPA).
        assert "replicas" not in find(manifests, "Deployment", name)["spec"]
        for trigger in spec["triggers"]:
            assert set(trigger) <= KEDA_TRIGGER_FIELDS and trigger["type"] == "prometheus"
            assert set(trigger["metadata"]) <= KEDA_PROMETHEUS_METADATA
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
            float(trigger["metadata"]["threshold"])
    chat = {t["name"]: t for t in scaled["serving-worker-chat"]["spec"]["triggers"]}
    assert set(chat) == {"queue", "kv-cache"}
    assert chat["queue"]["metadata"]["query"].startswith("sum(vllm:num_requests_waiting{")
    assert chat["queue"]["metricType"] == "AverageValue"  # per replica
    assert 'pod=~"serving-worker-chat-.*"' in chat["queue"]["metadata"]["query"]
    assert chat["kv-cache"]["metadata"]["query"].startswith("avg(vllm:kv_cache_usage_perc{")
    media = [m for n, m in scaled.items() if n != "serving-worker-chat"]
    for obj in media:
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["name"] == "in-flight"
        assert trigger["metadata"]["query"].startswith("sum(serving_requests_in_flight{")
    # A chat worker that may grow past one replica gets its pool router, which follows pods.
    _, args = pool_router_args(find(manifests, "Deployment", "serving-pool-chat"))
    assert args.service_discovery
    # Everything else is still strictly valid Kubernetes.
    for manifest in manifests:
        if manifest["kind"] != "ScaledObject":
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)


def prestop_drain(worker: dict[str, Any]) -> int:
    """The drain time of a worker container's preStop hook, which must be `serving drain`
    on the worker's own port as the CLI parses it."""
    from serving.cli import parser

    command = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "serving" and all(isinstance(a, str) for a in command)
    args = parser().parse_args(command[1:])
    assert args.func.__name__ == "cmd_drain" and args.url == "http://127.0.0.1:8000"
    assert worker["ports"][0]["containerPort"] == 8000
    return int(args.timeout)


def worker_stop(manifests: list[Manifest], name: str) -> tuple[int, int]:
    """A worker Deployment's (preStop drain, terminationGracePeriodSeconds)."""
    spec = find(manifests, "Deployment", name)["spec"]["template"]["spec"]
    (worker,) = spec["containers"]
    return prestop_drain(worker), spec["terminationGracePeriodSeconds"]


def test_scale_down_drains_before_a_pod_stops():
    """By default a pod drains for its worker's drain_timeout_s (the time a reload gives it)
    and the grace period adds a margin for vLLM's own shutdown."""
    manifests = keda_values()
    workers = names(manifests, "Deployment") - {"serving-router", "serving-pool-chat"}
    default = WorkerConfig.model_fields["drain_timeout_s"].default
    for name in workers:
        drain, grace = worker_stop(manifests, name)
        assert drain == default and grace == drain + 30


def test_the_drain_follows_the_configs_drain_timeout(tmp_path: Path):
    manifests = render("values-fleet.yaml", {
        "config": {"workers": {"chat": {"drain_timeout_s": 600.5}}},
        "workers": {"images": {"drainSeconds": 10, "terminationGracePeriodSeconds": 20},
                    "speech": {"drainSeconds": 0}}})
    assert worker_stop(manifests, "serving-worker-chat") == (601, 631)
    assert worker_stop(manifests, "serving-worker-images") == (10, 20)
    speech = container(find(manifests, "Deployment", "serving-worker-speech"))
    assert "lifecycle" not in speech  # drainSeconds 0: no hook
    config = load_config([rendered_config(manifests, tmp_path)])
    assert config.workers["chat"].drain_timeout_s == 600.5


def test_no_autoscaler_unless_asked():
    manifests = render("values-fleet.yaml")
    assert not [m for m in manifests if m["kind"] == "ScaledObject"]
    workers = [m for m in manifests if m["kind"] == "Deployment"
               and m["metadata"]["name"].startswith("serving-worker-")]
    assert workers and all("replicas" in m["spec"] for m in workers)
