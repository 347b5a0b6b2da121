"""The Kubernetes manifests (ops/k8s): every object of the kustomization against the
Kubernetes API's own schema (kubernetes-validate, strict: an unknown field is an error),
KEDA's objects against the fields they use, and what an operator relies on. Offline:
kustomize or kubectl, when installed, only confirms that it builds the same objects."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.config import SettingsError, get_settings
from tests.helpers import ROOT

K8S = ROOT / "ops" / "k8s"
EXAMPLE_SECRETS = K8S / "secrets.example.yaml"
# The Kubernetes version the manifests are validated against (README, "Kubernetes"): the
# oldest they are meant for, which every kubernetes-validate the dev extra allows (>=1.30)
# bundles. They are checked against the newest version the installed one bundles too.
K8S_VERSION = "1.30"
VERSIONS = sorted({K8S_VERSION, kubernetes_validate.utils.latest_version()})
NAMESPACE = "torchqueue"
API_SERVICE = "torchqueue-api"
# The images' user (ops/docker/Dockerfile.*).
UID = 10001
# KEDA's custom resources, which kubernetes-validate has no schema for: checked below.
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Environment variables that hold a secret: they must come from a Secret.
SECRET_ENV = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|^TORCHQUEUE_(REDIS|DATABASE)_URL$")
WORKER = ("torchqueue", "worker")

Obj = dict[str, Any]


def _load(path: Path) -> list[Obj]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _kustomization() -> Obj:
    return _load(K8S / "kustomization.yaml")[0]


@functools.cache
def _built() -> tuple[Obj, ...]:
    """The kustomization's objects, as `kubectl apply -k` would send them (its files set
    the namespace and image tags the kustomization would)."""
    return tuple(obj for name in _kustomization()["resources"] for obj in _load(K8S / name))


def resources() -> list[Obj]:
    return copy.deepcopy(list(_built()))


def of_kind(kind: str) -> list[Obj]:
    return [obj for obj in resources() if obj["kind"] == kind]


def named(kind: str, name: str) -> Obj:
    found = [obj for obj in of_kind(kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]["template"]["spec"]
    return spec


def workloads() -> list[Obj]:
    return [obj for obj in resources() if obj["kind"] in ("Deployment", "Job")]


def containers(obj: Obj) -> list[Obj]:
    pod = pod_spec(obj)
    return [*pod.get("initContainers", []), *pod["containers"]]


def argv(container: Obj) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def workers() -> list[Obj]:
    """The Deployments that run `torchqueue worker` for a pool's jobs (not the webhook
    sender, a `--queues webhooks` worker of the API image)."""
    deployments = of_kind("Deployment")
    return [
        d
        for d in deployments
        if argv(pod_spec(d)["containers"][0])[:2] == [*WORKER]
        and flag(argv(pod_spec(d)["containers"][0]), "--queues") != "webhooks"
    ]


def pool(deployment: Obj) -> str:
    value = flag(argv(pod_spec(deployment)["containers"][0]), "--pool")
    assert value, f"{deployment['metadata']['name']}: its worker names no --pool"
    return value


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("250m", "4", "16Gi") as a number (cores, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6}
    text = str(value)
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def example_secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in _load(EXAMPLE_SECRETS)}


# --- the set of objects -----------------------------------------------------------------


def test_the_kustomization_lists_every_manifest_but_the_example_secrets() -> None:
    kustomization = _kustomization()
    assert kustomization["namespace"] == NAMESPACE
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRETS.name}
    assert listed == on_disk
    assert EXAMPLE_SECRETS.name not in listed, "placeholder secrets must never be applied"
    assert not of_kind("Secret"), "Secrets are made by the operator (secrets.example.yaml)"
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in resources()]
    assert len(names) == len(set(names)), "two objects of one kind share a name"


def test_every_object_is_in_the_namespace() -> None:
    assert named("Namespace", NAMESPACE)
    for obj in resources():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_follows_the_kubernetes_schema(version: str) -> None:
    unknown, errors = set(), []
    for obj in resources():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.add(obj["kind"])
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {where}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert unknown == KEDA_KINDS  # checked against their own schema below


def test_the_schema_check_refuses_an_unknown_field() -> None:
    deployment = named("Deployment", "worker-gpu")
    pod_spec(deployment)["containers"][0]["resource"] = {"limits": {"cpu": "1"}}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(K8S)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(K8S)]
    return None


def test_kustomize_builds_the_same_objects() -> None:
    command = _kustomize()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    built = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    key = lambda obj: (obj["kind"], obj["metadata"]["name"])  # noqa: E731
    assert sorted(built, key=key) == sorted(resources(), key=key)


# --- KEDA ---------------------------------------------------------------------------------

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
_NUMBER = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}  # KEDA's metadata: strings
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _NAME, "namespace": {"const": NAMESPACE}, "labels": {"type": "object"}},
    "additionalProperties": False,
}
# The fields of keda.sh/v1alpha1 that these manifests use (KEDA 2.12 or later).
TRIGGER = {
    "type": "object",
    "required": ["type", "name", "metadata", "authenticationRef"],
    "additionalProperties": False,
    "properties": {
        "type": {"const": "metrics-api"},
        "name": {"type": "string", "pattern": r"^[a-z_][a-z0-9_]*$"},
        "metadata": {
            "type": "object",
            "required": ["url", "valueLocation", "targetValue", "authMode"],
            "additionalProperties": False,
            "properties": {
                "url": {"type": "string", "pattern": r"^https?://"},
                "valueLocation": {"type": "string"},
                "targetValue": _NUMBER,
                "activationTargetValue": _NUMBER,
                "authMode": {"const": "bearer"},
                "format": {"const": "json"},
            },
        },
        "authenticationRef": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": _NAME, "kind": {"const": "TriggerAuthentication"}},
        },
    },
}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "minReplicaCount", "maxReplicaCount", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"const": "apps/v1"},
                        "kind": {"const": "Deployment"},
                        "name": _NAME,
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "scalingModifiers": {
                            "type": "object",
                            "required": ["formula", "target"],
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string"},
                                "target": _NUMBER,
                                "activationTarget": _NUMBER,
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                        # Passed on to the HPA: checked as one below.
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": TRIGGER},
            },
        },
    },
}
TRIGGER_AUTHENTICATION = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["secretTargetRef"],
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        # metrics-api's bearer mode takes its token as `token`.
                        "properties": {"parameter": {"const": "token"}, "name": _NAME, "key": {}},
                    },
                }
            },
        },
    },
}


def test_keda_objects_follow_their_schema() -> None:
    for obj in of_kind("ScaledObject"):
        jsonschema.validate(obj, SCALED_OBJECT)
    for obj in of_kind("TriggerAuthentication"):
        jsonschema.validate(obj, TRIGGER_AUTHENTICATION)
    broken = named("ScaledObject", "worker-gpu")
    broken["spec"]["triggers"][0]["metadata"]["targetValue"] = 1  # a number, not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT)


def test_the_token_keda_sends_is_in_a_secret() -> None:
    secrets = example_secrets()
    for auth in of_kind("TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets.get(ref["name"], {}), ref


@pytest.mark.parametrize("version", VERSIONS)
def test_the_scaling_behaviour_is_one_the_hpa_takes(version: str) -> None:
    """KEDA hands ``advanced.horizontalPodAutoscalerConfig`` to the HPA it makes."""
    for scaled in of_kind("ScaledObject"):
        spec = scaled["spec"]
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"keda-hpa-{scaled['metadata']['name']}"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
                "minReplicas": max(1, spec["minReplicaCount"]),
                "maxReplicas": spec["maxReplicaCount"],
                **spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}),
            },
        }
        kubernetes_validate.validate(hpa, version, strict=True)


def test_each_worker_pool_scales_on_its_own_backlog() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    auths = {a["metadata"]["name"] for a in of_kind("TriggerAuthentication")}
    targets = set()
    for scaled in of_kind("ScaledObject"):
        spec = scaled["spec"]
        target = deployments.get(spec["scaleTargetRef"]["name"])
        assert target is not None, f"{scaled['metadata']['name']} targets no Deployment"
        assert target in workers(), f"{scaled['metadata']['name']} targets a non-worker"
        targets.add(target["metadata"]["name"])
        low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
        assert isinstance(low, int) and isinstance(high, int) and 0 <= low <= high
        assert "replicas" not in target["spec"], "the ScaledObject owns the replica count"
        # The API's count of the pool's jobs, never Redis lists: priorities split a queue.
        backlog = f"http://{API_SERVICE}.{NAMESPACE}.svc:8000/v1/pools/{pool(target)}/backlog"
        triggers = spec["triggers"]
        assert triggers[0]["type"] == "metrics-api"
        assert triggers[0]["metadata"]["valueLocation"] == "queued"
        for trigger in triggers:
            assert trigger["type"] == "metrics-api"
            assert trigger["metadata"]["url"] == backlog
            assert trigger["metadata"]["url"].endswith(f"/v1/pools/{pool(target)}/backlog")
            assert trigger["metadata"]["valueLocation"] == trigger["name"]
            assert trigger["metadata"]["targetValue"] == "1"  # one job per worker
            assert trigger["authenticationRef"]["name"] in auths
        # One worker per job, queued or running: on `queued` alone, a worker that claimed
        # its job would be scaled away mid-training.
        modifiers = spec["advanced"]["scalingModifiers"]
        terms = set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"]))
        assert terms == {t["name"] for t in triggers} == {"queued", "running"}
        assert "+" in modifiers["formula"] and modifiers["target"] == "1"
    assert targets == {w["metadata"]["name"] for w in workers()}, "a pool without autoscaling"


def test_the_gpu_pool_scales_to_zero_and_the_cpu_pool_keeps_one() -> None:
    assert named("ScaledObject", "worker-gpu")["spec"]["minReplicaCount"] == 0
    assert named("ScaledObject", "worker-cpu")["spec"]["minReplicaCount"] == 1


# --- what an operator relies on --------------------------------------------------------


def test_every_container_has_requests_and_limits() -> None:
    for obj in workloads():
        for container in containers(obj):
            resources_ = container.get("resources", {})
            for side in ("requests", "limits"):
                for what in ("cpu", "memory"):
                    value = resources_.get(side, {}).get(what)
                    assert value, f"{obj['metadata']['name']}/{container['name']}: {side}.{what}"
            for what in ("cpu", "memory"):
                request, limit = resources_["requests"][what], resources_["limits"][what]
                assert quantity(request) <= quantity(limit), f"{container['name']}: {what}"


def test_secrets_come_from_secret_objects() -> None:
    secrets = example_secrets()
    for obj in workloads():
        for container in containers(obj):
            where = f"{obj['metadata']['name']}/{container['name']}"
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, f"{where}: name each secret it needs"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if SECRET_ENV.search(env["name"]):
                    assert ref is not None and "value" not in env, f"{where}: {env['name']}"
                if ref is not None:
                    assert ref["key"] in secrets.get(ref["name"], {}), f"{where}: {ref}"
    for config in of_kind("ConfigMap"):
        leaked = [name for name in config["data"] if SECRET_ENV.search(name)]
        assert not leaked, f"secrets in ConfigMap {config['metadata']['name']}: {leaked}"


def test_the_example_secrets_are_placeholders() -> None:
    for name, values in example_secrets().items():
        for key, value in values.items():
            if key != "user":
                assert "change-me" in value, f"{name}.{key} looks like a real secret"


def _env(container: Obj) -> dict[str, str]:
    """The container's TORCHQUEUE_* environment as the kubelet would set it, with stand-ins
    for the example Secrets' placeholders."""
    configs = {c["metadata"]["name"]: c["data"] for c in of_kind("ConfigMap")}
    secrets = example_secrets()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configs[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        value = secrets[ref["name"]][ref["key"]] if ref else item["value"]
        env[item["name"]] = re.sub(r"change-me[\w-]*", "0123456789abcdef" * 2, value)
    return env


def _service_links() -> dict[str, str]:
    """What the kubelet adds to a pod's environment for each Service of its namespace,
    unless the pod says ``enableServiceLinks: false``."""
    env = {}
    for service in of_kind("Service"):
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        port = service["spec"]["ports"][0]["port"]
        env[f"{prefix}_SERVICE_HOST"] = "10.96.0.10"
        env[f"{prefix}_SERVICE_PORT"] = str(port)
        env[f"{prefix}_PORT"] = f"tcp://10.96.0.10:{port}"
    return env


def _check_settings() -> None:
    """The settings from this environment, as a process would read them at its start."""
    get_settings.cache_clear()
    try:
        get_settings()  # raises SettingsError naming the variable at fault
    finally:
        get_settings.cache_clear()


def test_every_process_accepts_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for obj in workloads():
        assert pod_spec(obj).get("enableServiceLinks") is False, obj["metadata"]["name"]
        for container in containers(obj):
            for name in [n for n in os.environ if n.startswith("TORCHQUEUE_")]:
                monkeypatch.delenv(name)
            for name, value in _env(container).items():
                monkeypatch.setenv(name, value)
            _check_settings()
    # What enableServiceLinks: false spares them: TORCHQUEUE_API_PORT=tcp://... is refused.
    for name, value in _service_links().items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="TORCHQUEUE_API_PORT"):
        _check_settings()


def test_commands_use_the_real_flags() -> None:
    import click

    from ops.cli import cli

    for obj in workloads():
        for container in containers(obj):
            args = argv(container)
            assert args[0] == "torchqueue", container["name"]
            command: click.Command = cli
            rest = args[1:]
            while isinstance(command, click.Group):
                sub = command.get_command(click.Context(command), rest[0])
                assert sub is not None, f"no command {rest[0]!r}: {args}"
                command, rest = sub, rest[1:]
            command.make_context(command.name, list(rest))  # raises on an unknown flag


def test_the_images_are_the_ones_compose_builds() -> None:
    names = {image["name"] for image in _kustomization()["images"]}
    assert names == {"torchqueue-api", "torchqueue-worker"}
    for obj in workloads():
        image = "torchqueue-worker" if obj in workers() else "torchqueue-api"
        for container in containers(obj):
            assert container["image"] == f"{image}:latest", container["name"]


def test_the_api_serves_on_8000_with_health_probes() -> None:
    api = named("Deployment", API_SERVICE)
    (container,) = pod_spec(api)["containers"]
    assert argv(container) == ["torchqueue", "api", "--host", "0.0.0.0", "--port", "8000"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # Liveness asks only that the process is up: an outage of the database or Redis takes
    # the API out of the Service, it does not restart it.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"] for e in container["env"]}
    assert {"TORCHQUEUE_BOOTSTRAP_KEY", "TORCHQUEUE_REDIS_URL", "TORCHQUEUE_DATABASE_URL"} <= env
    service = named("Service", API_SERVICE)
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert api["spec"]["replicas"] >= 2


def test_flower_takes_its_login_from_a_secret() -> None:
    flower = named("Deployment", "torchqueue-flower")
    (container,) = pod_spec(flower)["containers"]
    assert flag(argv(container), "--port") == "5555"
    assert container["ports"][0]["containerPort"] == 5555
    env = {e["name"]: e for e in container["env"]}
    for name in ("TORCHQUEUE_FLOWER_USER", "TORCHQUEUE_FLOWER_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert named("Service", "torchqueue-flower")["spec"]["ports"][0]["port"] == 5555


def test_the_migration_runs_as_a_job() -> None:
    (job,) = of_kind("Job")
    assert [argv(c) for c in containers(job)] == [["torchqueue", "db", "upgrade"]]
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")


def test_gpu_workers_request_and_tolerate_a_gpu() -> None:
    gpu = [w for w in workers() if flag(argv(pod_spec(w)["containers"][0]), "--gpus")]
    assert gpu, "no GPU worker"
    for worker in gpu:
        pod = pod_spec(worker)
        (container,) = pod["containers"]
        # The device plugin shows the pod its one GPU as index 0.
        assert flag(argv(container), "--gpus") == "0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        requested = container["resources"]["requests"].get("nvidia.com/gpu")
        assert requested in (None, 1)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    for worker in workers():
        if worker not in gpu:
            assert "--cpu" in argv(pod_spec(worker)["containers"][0])
            assert "nvidia.com/gpu" not in pod_spec(worker)["containers"][0]["resources"]["limits"]


def test_workers_give_their_job_back_when_stopped() -> None:
    """The kubelet SIGTERMs PID 1 (the Celery parent) alone, whose warm shutdown waits for
    the whole training; the preStop hook SIGTERMs the training child first, which gives
    its job back within a batch, in the time the grace period leaves."""
    from workers.main import MAX_MEMORY_PER_CHILD_KB

    for worker in workers():
        pod = pod_spec(worker)
        name = worker["metadata"]["name"]
        assert pod["terminationGracePeriodSeconds"] >= 120, name
        assert pod.get("shareProcessNamespace") is not True, name
        (container,) = pod["containers"]
        hook = argv(container["lifecycle"]["preStop"]["exec"])
        assert hook[:2] == ["python", "-c"] and "os.kill(-1, signal.SIGTERM)" in hook[2], name
        compile(hook[2], f"{name} preStop", "exec")
        # The worker replaces a training child past this; the kernel must not kill it first.
        limit = quantity(container["resources"]["limits"]["memory"])
        assert limit > MAX_MEMORY_PER_CHILD_KB * 1024, name
        env = {e["name"]: e.get("value") for e in container["env"]}
        # The node's cores are all visible to the pod: torch's threads follow the limit.
        threads = int(env["TORCHQUEUE_TORCH_THREADS"] or 0)
        assert 1 <= threads <= quantity(container["resources"]["limits"]["cpu"]), name
        home = {v["name"]: v for v in pod["volumes"]}["home"]["emptyDir"]["sizeLimit"]
        cache = float(env["TORCHQUEUE_DATASET_CACHE_MB"] or 0) * 2**20
        assert 0 < cache < quantity(home), name


def test_selectors_match_their_pods() -> None:
    deployments = of_kind("Deployment")
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
        others = [
            d for d in deployments
            if d is not deployment
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert not others, f"{deployment['metadata']['name']}'s selector takes others' pods"

    def matched(selector: dict[str, str]) -> list[str]:
        return [
            d["metadata"]["name"]
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    for service in of_kind("Service"):
        assert len(matched(service["spec"]["selector"])) == 1, service["metadata"]["name"]
        (port,) = service["spec"]["ports"]
        (target,) = matched(service["spec"]["selector"])
        names = {p["name"] for c in containers(named("Deployment", target)) for p in c["ports"]}
        assert port["targetPort"] in names
    for budget in of_kind("PodDisruptionBudget"):
        assert len(matched(budget["spec"]["selector"]["matchLabels"])) == 1


def test_a_disruption_budget_covers_the_api_and_each_worker_pool() -> None:
    covered = set()
    for budget in of_kind("PodDisruptionBudget"):
        selector = budget["spec"]["selector"]["matchLabels"]
        for deployment in of_kind("Deployment"):
            if selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items():
                covered.add(deployment["metadata"]["name"])
    wanted = {API_SERVICE} | {w["metadata"]["name"] for w in workers()}
    assert wanted <= covered
    # Workers scale to zero: a budget in pods available would block every drain there.
    for worker in workers():
        assert (
            "minAvailable" not in named("PodDisruptionBudget", worker["metadata"]["name"])["spec"]
        )


def test_pods_run_as_the_images_user_without_privileges() -> None:
    """What the namespace's `restricted` Pod Security level asks of every pod."""
    labels = named("Namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in workloads():
        pod = pod_spec(obj)
        where = obj["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == UID, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in containers(obj):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert context.get("runAsUser", UID) == UID, where
            # A read-only image: what the processes write goes to the home and /tmp.
            assert context["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            home = _env(container).get("TORCHQUEUE_HOME")
            assert {home, "/tmp"} <= mounts, where
        for volume in pod.get("volumes", []):
            assert set(volume) == {"name", "emptyDir"}, f"{where}: {volume['name']}"


def test_the_readme_names_the_version_validated_against() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    assert f"Kubernetes {K8S_VERSION}" in section
    assert "kubectl apply -k ops/k8s" in section
