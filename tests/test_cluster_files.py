"""Every file under cluster/ parses, and the cluster definitions keep their security defaults.

The Ray cluster-launcher configs go through Ray's own validation: `prepare_config` (Ray's provider
defaults merged in, as `ray up` does) and `validate_config` (ray/autoscaler/ray-schema.json plus the
node-type rules), the checks `ray up` makes before it contacts a cloud. Ray has no validator for
KubeRay manifests, so those are checked against the fields KubeRay's CRDs require. Each checker
also runs on a broken copy, so that it is seen to fail. No network and no cloud SDK: seconds.
"""

from __future__ import annotations

import configparser
import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
COMPOSE = CLUSTER / "mlflow" / "docker-compose.yaml"
COMPOSE_AUTH = CLUSTER / "mlflow" / "docker-compose.auth.yaml"
MLFLOW_K8S = CLUSTER / "mlflow" / "kubernetes.yaml"

EXPECTED_FILES = {
    "README.md",
    "Dockerfile",
    "Dockerfile.dockerignore",
    "aws.yaml",
    "gcp.yaml",
    "kuberay/raycluster.yaml",
    "kuberay/rayjob.yaml",
    "mlflow/.gitignore",
    "mlflow/basic_auth.ini",
    "mlflow/docker-compose.yaml",
    "mlflow/docker-compose.auth.yaml",
    "mlflow/env.example",
    "mlflow/kubernetes.yaml",
}
# Every command list of a launcher config: one left out is filled from Ray's defaults, which
# pip-install a nightly Ray wheel and start the dashboard on 0.0.0.0.
COMMAND_KEYS = [
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
]
# Environment variables whose value is a credential: only ever from a Secret, a file or the shell.
SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|SECRET_KEY|ACCESS_KEY_ID|SECRET_ACCESS_KEY)$")
# A Compose value that names a variable instead of holding one: ${VAR} or ${VAR:?message}.
INTERPOLATION = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:\?[^}]*)?\}$")
PLACEHOLDER = re.compile(r"YOUR-[A-Z]+(?:-[A-Z]+)*")
PASSWORD_IN_URI = re.compile(r"://[^/@:]+:[^/@]+@")

Doc = dict[str, Any]


# --- loading ----------------------------------------------------------------------------------


def load_docs(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text()))


def load_doc(path: Path) -> Doc:
    docs = load_docs(path)
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{path}: expected one YAML mapping"
    return docs[0]


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: ends inside a continued line"
    return instructions


def env_file(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), f"{path}: not KEY=VALUE: {line!r}"
            entries[key] = value
    return entries


def check_parses(path: Path) -> None:
    name = path.name
    if path.suffix in {".yaml", ".yml"}:
        docs = load_docs(path)
        assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"
    elif name == "Dockerfile":
        assert dockerfile_instructions(path)
    elif name.endswith(".dockerignore") or name == ".gitignore":
        patterns = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert patterns, f"{path}: no patterns"
    elif path.suffix == ".ini":
        parser = configparser.ConfigParser()
        parser.read_string(path.read_text(), source=str(path))
        assert parser.sections(), f"{path}: no sections"
    elif path.suffix == ".md":
        assert path.read_text().startswith("# "), f"{path}: expected a Markdown title"
    elif name == "env.example":
        assert env_file(path)
    else:
        pytest.fail(f"{path}: no parser for this kind of file; add one to check_parses in {Path(__file__).name}")


# --- Ray cluster launcher ---------------------------------------------------------------------


def ray_validate(config: Doc) -> Doc:
    """Ray's own checks of a cluster-launcher config, as `ray up` runs them before it contacts the
    cloud (the provider's bootstrap after them needs credentials and is left out)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def docker_env(config: Doc) -> dict[str, str]:
    """The variables that docker.run_options set with `--env NAME=VALUE`."""
    env: dict[str, str] = {}
    for option in config["docker"]["run_options"]:
        flag, _, assignment = option.partition(" ")
        if flag in {"--env", "-e"}:
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def worker_types(config: Doc) -> dict[str, Doc]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def check_launcher(config: Doc) -> None:
    """llmlab's rules for a launcher config, on top of Ray's validation."""
    for key in COMMAND_KEYS:
        assert key in config, f"{key}: spell it out, or Ray's default commands are used"
    assert config["setup_commands"] and config["head_start_ray_commands"] and config["worker_start_ray_commands"]
    commands = " ".join(cmd for key in COMMAND_KEYS for cmd in config[key])
    assert "0.0.0.0" not in commands, "a command binds something to every interface"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start, "dashboard must stay on loopback"

    env = docker_env(config)
    assert env.get("RAY_AUTH_MODE") == "token", "token authentication must be on in every container"
    assert "RAY_AUTH_TOKEN" not in env, "the token goes in a file, never in the config"
    token_path = env.get("RAY_AUTH_TOKEN_PATH", "")
    mounts = config.get("file_mounts", {})
    mounted = [remote for remote in mounts if token_path.startswith(remote.rstrip("/") + "/")]
    assert mounted, f"RAY_AUTH_TOKEN_PATH={token_path!r} is not inside a file_mounts folder"
    local = Path(mounts[mounted[0]]).expanduser()
    assert REPO not in local.parents, "the token folder must live outside the repository"
    assert env.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")), "nodes need MLFLOW_TRACKING_URI"

    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [name for name, t in worker_types(config).items() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "at least one worker type must have GPUs"
    for name, node_type in worker_types(config).items():
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers", config["max_workers"])
        assert 0 <= low <= high <= config["max_workers"], f"{name}: need 0 <= min_workers <= max_workers"


def remove_worker_resources(config: Doc) -> None:
    del next(iter(worker_types(config).values()))["resources"]


def remove_worker_node_config(config: Doc) -> None:
    del next(iter(worker_types(config).values()))["node_config"]


def add_unknown_key(config: Doc) -> None:
    config["dashboard_host"] = "127.0.0.1"


def head_type_missing(config: Doc) -> None:
    config["head_node_type"] = "no-such-type"


def min_workers_above_max(config: Doc) -> None:
    config["max_workers"] = 1
    next(iter(worker_types(config).values()))["min_workers"] = 2


RAY_BREAKAGES: list[Callable[[Doc], None]] = [
    remove_worker_resources,
    remove_worker_node_config,
    add_unknown_key,
    head_type_missing,
    min_workers_above_max,
]


def drop_start_commands(config: Doc) -> None:
    del config["head_start_ray_commands"]


def public_dashboard(config: Doc) -> None:
    config["head_start_ray_commands"] = [c.replace("127.0.0.1", "0.0.0.0") for c in config["head_start_ray_commands"]]


def auth_off(config: Doc) -> None:
    config["docker"]["run_options"] = [o for o in config["docker"]["run_options"] if "RAY_AUTH_MODE" not in o]


def literal_token(config: Doc) -> None:
    config["docker"]["run_options"].append("--env RAY_AUTH_TOKEN=0123456789abcdef")


def no_gpu_workers(config: Doc) -> None:
    for node_type in worker_types(config).values():
        node_type["resources"].pop("GPU", None)


LAUNCHER_BREAKAGES: list[Callable[[Doc], None]] = [
    drop_start_commands,
    public_dashboard,
    auth_off,
    literal_token,
    no_gpu_workers,
]


# --- KubeRay ----------------------------------------------------------------------------------


# Fields of KubeRay's ray.io/v1 types (KubeRay v1.6): a misspelt key is rejected by the API server's
# strict field validation, or silently pruned by a lenient one.
TOP_LEVEL_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
RAY_CLUSTER_SPEC_FIELDS = {
    "authOptions",
    "autoscalerOptions",
    "enableInTreeAutoscaling",
    "gcsFaultToleranceOptions",
    "headGroupSpec",
    "headServiceAnnotations",
    "managedBy",
    "rayVersion",
    "suspend",
    "upgradeStrategy",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "labels", "rayStartParams", "resources", "serviceType", "template"}
WORKER_GROUP_FIELDS = {
    "groupName",
    "idleTimeoutSeconds",
    "labels",
    "maxReplicas",
    "minReplicas",
    "numOfHosts",
    "rayStartParams",
    "replicas",
    "resources",
    "scaleStrategy",
    "suspend",
    "template",
}
RAY_JOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "clusterSelector",
    "deletionPolicy",
    "deletionStrategy",
    "entrypoint",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "jobId",
    "managedBy",
    "metadata",
    "rayClusterSpec",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "submissionMode",
    "submitterConfig",
    "submitterPodTemplate",
    "suspend",
    "ttlSecondsAfterFinished",
}


def check_fields(mapping: Doc, known: set[str], where: str) -> None:
    unknown = sorted(set(mapping) - known)
    assert not unknown, f"{where}: not a field of KubeRay's CRD: {unknown}"


def env_map(container: Doc) -> dict[str, Doc]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def secret_ref(entry: Doc) -> Doc | None:
    ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
    return ref if "value" not in entry else None


def ray_containers(spec: Doc) -> list[Doc]:
    """The Ray container of the head and of each worker group (KubeRay's is the first)."""
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [t["spec"]["containers"][0] for t in templates]


def check_pod_template(template: Doc, where: str) -> None:
    pod = template["spec"]
    containers = pod.get("containers")
    assert isinstance(containers, list) and containers, f"{where}: template.spec.containers is required"
    for container in containers:
        assert container.get("name") and container.get("image"), f"{where}: every container needs name and image"
    security = pod.get("securityContext", {})
    assert security.get("runAsNonRoot") is True, f"{where}: pods run as non-root"
    assert isinstance(security.get("runAsUser"), int) and security["runAsUser"] > 0, f"{where}: numeric runAsUser"


def gpus(container: Doc) -> int:
    resources = container.get("resources", {})
    limit = int(resources.get("limits", {}).get("nvidia.com/gpu", 0))
    request = resources.get("requests", {}).get("nvidia.com/gpu")
    assert request is None or int(request) == limit, "GPU requests must equal limits"
    return limit


def check_ray_cluster_spec(spec: Doc) -> None:
    """What KubeRay's RayCluster CRD requires, and llmlab's security defaults."""
    check_fields(spec, RAY_CLUSTER_SPEC_FIELDS, "RayCluster spec")
    assert str(spec.get("rayVersion", "")).startswith("2.60."), "rayVersion must match the image's Ray"
    head = spec["headGroupSpec"]
    check_fields(head, HEAD_GROUP_FIELDS, "headGroupSpec")
    assert isinstance(head.get("rayStartParams"), dict), "headGroupSpec.rayStartParams is required"
    check_pod_template(head["template"], "headGroupSpec")
    assert head.get("serviceType") == "ClusterIP", "the head Service must be ClusterIP"
    assert head.get("enableIngress") is False, "no Ingress to the dashboard"
    # The dashboard stays at KubeRay's default, the pod network behind that ClusterIP Service (the
    # operator and RayJob submitters need it there); nothing may widen it.
    assert "dashboard-host" not in head.get("rayStartParams", {}), "leave dashboard-host to KubeRay"
    assert gpus(head["template"]["spec"]["containers"][0]) == 0, "the head is a CPU node"

    groups = spec.get("workerGroupSpecs")
    assert isinstance(groups, list) and groups, "workerGroupSpecs must list at least one group"
    for group in groups:
        check_fields(group, WORKER_GROUP_FIELDS, "workerGroupSpecs[]")
        name = group.get("groupName")
        assert isinstance(name, str) and name, "every worker group needs a groupName"
        counts = [group.get(key) for key in ("minReplicas", "replicas", "maxReplicas")]
        assert all(isinstance(c, int) for c in counts), f"{name}: minReplicas, replicas and maxReplicas"
        assert 0 <= counts[0] <= counts[1] <= counts[2] and counts[2] >= 1, f"{name}: need min <= replicas <= max"
        assert isinstance(group.get("rayStartParams"), dict), f"{name}: rayStartParams is required"
        check_pod_template(group["template"], name)
    assert any(gpus(g["template"]["spec"]["containers"][0]) >= 1 for g in groups), "no GPU worker group"

    auth = spec.get("authOptions", {})
    assert auth.get("mode") == "token", "authOptions.mode must be token"
    for container in ray_containers(spec):
        env = env_map(container)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{container['name']}: RAY_AUTH_MODE=token"
        ref = secret_ref(env.get("RAY_AUTH_TOKEN", {}))
        assert ref and ref["name"] == auth.get("secretName"), f"{container['name']}: token from the authOptions Secret"
        assert "MLFLOW_TRACKING_URI" in env, f"{container['name']}: MLFLOW_TRACKING_URI"


def iter_env(node: Any) -> Iterator[Doc]:
    """Every entry of every `env` list, anywhere in a manifest."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                yield from (entry for entry in value if isinstance(entry, dict))
            else:
                yield from iter_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_env(item)


def check_no_literal_secrets(docs: list[Doc]) -> None:
    for doc in docs:
        assert doc.get("kind") != "Secret", "Secrets are created with kubectl, never committed"
        for entry in iter_env(doc):
            if SECRET_NAME.search(entry["name"]):
                assert secret_ref(entry), f"{entry['name']}: a credential must come from a secretKeyRef"


def check_services_internal(docs: list[Doc]) -> None:
    kinds = {doc.get("kind") for doc in docs}
    assert not kinds & {"Ingress", "Route", "Gateway"}, "nothing may be exposed outside the cluster"
    for doc in docs:
        if doc.get("kind") == "Service":
            assert doc["spec"].get("type") == "ClusterIP", f"Service {doc['metadata']['name']}: ClusterIP only"


def mlflow_flags(args: list[str]) -> dict[str, str]:
    """`--flag=value` arguments of `mlflow server` as a mapping."""
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def check_mlflow_flags(args: list[str]) -> None:
    flags = mlflow_flags(args)
    backend = flags.get("--backend-store-uri", "")
    assert backend.startswith("postgresql://"), "the backend store is PostgreSQL"
    assert not PASSWORD_IN_URI.search(backend), "no password in the backend URI (libpq reads PGPASSWORD)"
    assert flags.get("--artifacts-destination", "").startswith(("s3://", "gs://")), "artifacts go to an object store"
    hosts = flags.get("--allowed-hosts", "")
    assert hosts and "*" not in hosts.split(","), "--allowed-hosts must list the served names"


def check_compose(compose: Doc) -> None:
    services = compose["services"]
    mlflow = services["mlflow"]
    ports = mlflow.get("ports", [])
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), "publish MLflow on 127.0.0.1 only"
    for name, service in services.items():
        if name != "mlflow":
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), f"{name}: not public"
    assert mlflow["command"][:2] == ["mlflow", "server"]
    check_mlflow_flags(mlflow["command"])
    check_compose_secrets(compose)


def check_compose_secrets(compose: Doc) -> None:
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert value is None or INTERPOLATION.match(str(value)), f"{name}: {key} must come from .env"


# --- tests: every file ------------------------------------------------------------------------


def test_cluster_folder_has_every_definition() -> None:
    present = {str(p.relative_to(CLUSTER)) for p in cluster_files()}
    assert present >= EXPECTED_FILES, f"missing: {sorted(EXPECTED_FILES - present)}"


@pytest.mark.parametrize("path", cluster_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_cluster_file_parses(path: Path) -> None:
    check_parses(path)


def test_every_placeholder_is_documented() -> None:
    readme = (CLUSTER / "README.md").read_text()
    placeholders = {m for p in cluster_files() if p.name != "README.md" for m in PLACEHOLDER.findall(p.read_text())}
    assert placeholders, "the configs name what to replace"
    undocumented = sorted(p for p in placeholders if p not in readme)
    assert not undocumented, f"cluster/README.md must say what to replace: {undocumented}"


def test_readme_covers_setup_submission_and_security() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for needle in [
        "ray job submit",
        "llmlab submit",
        "ray dashboard",
        "tracking.uri",
        "MLFLOW_TRACKING_URI",
        "train.storage_path",
        "s3://",
        "gs://",
        "RAY_AUTH_MODE=token",
        "docker compose",
        "kubectl apply",
    ]:
        assert needle in readme, f"cluster/README.md should cover {needle!r}"


# --- tests: Ray cluster launcher --------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_validation(name: str) -> None:
    config = load_doc(CLUSTER / name)
    prepared = ray_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The commands that run are the file's (setup_commands merged in front, as Ray does), not Ray's
    # defaults.
    for key in ("initialization_commands", "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert prepared[key] == config[key], key
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == config["setup_commands"] + config[key], key
    assert prepared["docker"] == config["docker"]


@pytest.mark.parametrize("breakage", RAY_BREAKAGES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_ray_validation_rejects_a_broken_copy(name: str, breakage: Callable[[Doc], None]) -> None:
    config = load_doc(CLUSTER / name)
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_keeps_llmlab_defaults(name: str) -> None:
    text = (CLUSTER / name).read_text()
    check_launcher(load_doc(CLUSTER / name))
    assert "RAY_AUTH_TOKEN=" not in text
    assert re.search(r"train\.storage_path=(s3|gs)://", text), "say that checkpoints need shared storage"


@pytest.mark.parametrize("breakage", LAUNCHER_BREAKAGES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_check_rejects_a_weakened_copy(name: str, breakage: Callable[[Doc], None]) -> None:
    config = load_doc(CLUSTER / name)
    breakage(config)
    with pytest.raises(AssertionError):
        check_launcher(config)


def test_every_config_runs_the_same_image() -> None:
    images = {load_doc(CLUSTER / name)["docker"]["image"] for name in LAUNCHER_CONFIGS}
    for path in (RAYCLUSTER, RAYJOB):
        images |= set(re.findall(r"^\s*image:\s*(\S+)", path.read_text(), flags=re.MULTILINE))
    assert len(images) == 1, f"one llmlab image everywhere, got {sorted(images)}"
    (image,) = images
    assert "llmlab" in image and "ray2.60" in image, image
    assert image in (CLUSTER / "Dockerfile").read_text(), "the Dockerfile shows how to build this tag"


# --- tests: KubeRay ---------------------------------------------------------------------------


def test_raycluster_matches_the_crd_and_security_defaults() -> None:
    docs = load_docs(RAYCLUSTER)
    (cluster,) = docs
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    check_fields(cluster, TOP_LEVEL_FIELDS, "RayCluster")
    assert cluster["metadata"]["name"]
    check_ray_cluster_spec(cluster["spec"])
    check_no_literal_secrets(docs)


def test_rayjob_runs_the_quickstart_on_the_same_cluster() -> None:
    docs = load_docs(RAYJOB)
    (job,) = docs
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    check_fields(job, TOP_LEVEL_FIELDS, "RayJob")
    spec = job["spec"]
    check_fields(spec, RAY_JOB_SPEC_FIELDS, "RayJob spec")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"] == load_doc(RAYCLUSTER)["spec"], "keep rayjob.yaml's cluster as raycluster.yaml's"
    check_ray_cluster_spec(spec["rayClusterSpec"])

    entrypoint = spec["entrypoint"].split()
    assert entrypoint[:3] == ["llmlab", "run", "experiments/quickstart.yaml"]
    assert (REPO / entrypoint[2]).is_file()
    storage = [arg.split("=", 1)[1] for arg in entrypoint if arg.startswith("train.storage_path=")]
    assert storage and storage[0].startswith(("s3://", "gs://")), "a cluster needs shared train.storage_path"
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]

    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    env = env_map(submitter)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = secret_ref(env["RAY_AUTH_TOKEN"])
    assert ref and ref["name"] == spec["rayClusterSpec"]["authOptions"]["secretName"]
    check_no_literal_secrets(docs)


def weaken_worker_auth(spec: Doc) -> None:
    container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_MODE"]


def expose_head(spec: Doc) -> None:
    spec["headGroupSpec"]["serviceType"] = "LoadBalancer"


def drop_gpu_limits(spec: Doc) -> None:
    for group in spec["workerGroupSpecs"]:
        for part in ("limits", "requests"):
            group["template"]["spec"]["containers"][0]["resources"][part].pop("nvidia.com/gpu", None)


def drop_group_name(spec: Doc) -> None:
    del spec["workerGroupSpecs"][0]["groupName"]


def drop_max_replicas(spec: Doc) -> None:
    del spec["workerGroupSpecs"][0]["maxReplicas"]


def drop_mlflow_uri(spec: Doc) -> None:
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "MLFLOW_TRACKING_URI"]


def drop_head_start_params(spec: Doc) -> None:
    del spec["headGroupSpec"]["rayStartParams"]


def misspell_ingress(spec: Doc) -> None:
    spec["headGroupSpec"]["enableIngres"] = spec["headGroupSpec"].pop("enableIngress")


def misspell_autoscaling(spec: Doc) -> None:
    spec["enableInTreeAutoScaling"] = spec.pop("enableInTreeAutoscaling")


KUBERAY_BREAKAGES: list[Callable[[Doc], None]] = [
    weaken_worker_auth,
    expose_head,
    drop_gpu_limits,
    drop_group_name,
    drop_max_replicas,
    drop_mlflow_uri,
    drop_head_start_params,
    misspell_ingress,
    misspell_autoscaling,
]


@pytest.mark.parametrize("breakage", KUBERAY_BREAKAGES, ids=lambda f: f.__name__)
def test_kuberay_check_rejects_a_broken_copy(breakage: Callable[[Doc], None]) -> None:
    spec = copy.deepcopy(load_doc(RAYCLUSTER)["spec"])
    breakage(spec)
    with pytest.raises(AssertionError):
        check_ray_cluster_spec(spec)


def test_literal_secret_check_fails_on_an_inline_token() -> None:
    cluster = load_doc(RAYCLUSTER)
    container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef"})
    container["env"] = [e for e in container["env"] if not (e["name"] == "RAY_AUTH_TOKEN" and "valueFrom" in e)]
    with pytest.raises(AssertionError):
        check_no_literal_secrets([cluster])


# --- tests: MLflow ----------------------------------------------------------------------------


def test_compose_mlflow_is_local_only_with_postgres_and_object_store() -> None:
    compose = load_doc(COMPOSE)
    check_compose(compose)
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert "PGPASSWORD" in compose["services"]["mlflow"]["environment"]


def mlflow_service(compose: Doc) -> Doc:
    service: Doc = compose["services"]["mlflow"]
    return service


def publish_on_all_interfaces(compose: Doc) -> None:
    mlflow_service(compose)["ports"] = ["5000:5000"]


def publish_on_0000(compose: Doc) -> None:
    mlflow_service(compose)["ports"] = ["0.0.0.0:5000:5000"]


def publish_postgres(compose: Doc) -> None:
    compose["services"]["postgres"]["ports"] = ["5432:5432"]


def drop_allowed_hosts(compose: Doc) -> None:
    service = mlflow_service(compose)
    service["command"] = [arg for arg in service["command"] if not arg.startswith("--allowed-hosts")]


def allow_every_host(compose: Doc) -> None:
    service = mlflow_service(compose)
    service["command"] = [re.sub(r"^--allowed-hosts=.*", "--allowed-hosts=*", arg) for arg in service["command"]]


def inline_password(compose: Doc) -> None:
    mlflow_service(compose)["environment"]["PGPASSWORD"] = "hunter2"


def password_in_uri(compose: Doc) -> None:
    service = mlflow_service(compose)
    service["command"] = [arg.replace("mlflow@", "mlflow:hunter2@") for arg in service["command"]]


COMPOSE_BREAKAGES: list[Callable[[Doc], None]] = [
    publish_on_all_interfaces,
    publish_on_0000,
    publish_postgres,
    drop_allowed_hosts,
    allow_every_host,
    inline_password,
    password_in_uri,
]


@pytest.mark.parametrize("breakage", COMPOSE_BREAKAGES, ids=lambda f: f.__name__)
def test_compose_check_rejects_a_weakened_copy(breakage: Callable[[Doc], None]) -> None:
    compose = load_doc(COMPOSE)
    breakage(compose)
    with pytest.raises(AssertionError):
        check_compose(compose)


def test_compose_basic_auth_option() -> None:
    base, auth = load_doc(COMPOSE), load_doc(COMPOSE_AUTH)
    mlflow = auth["services"]["mlflow"]
    assert mlflow["command"] == base["services"]["mlflow"]["command"] + ["--app-name=basic-auth"]
    env = mlflow["environment"]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert INTERPOLATION.match(env[key]), f"{key} must come from .env"
    check_compose_secrets(auth)

    config_path = env["MLFLOW_AUTH_CONFIG_PATH"]
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in mlflow["volumes"]}
    assert mounted[config_path] == "./basic_auth.ini"
    ini = configparser.ConfigParser()
    ini.read(CLUSTER / "mlflow" / "basic_auth.ini")
    assert ini["mlflow"]["database_uri"] and ini["mlflow"]["default_permission"]
    assert "admin_password" not in ini["mlflow"], "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD"


def test_env_example_holds_no_secret() -> None:
    entries = env_file(CLUSTER / "mlflow" / "env.example")
    assert "POSTGRES_PASSWORD" in entries
    filled = [key for key, value in entries.items() if SECRET_NAME.search(key) and value]
    assert not filled, f"env.example must leave credentials empty: {filled}"
    assert ".env" in (CLUSTER / "mlflow" / ".gitignore").read_text().split()


def test_mlflow_kubernetes_is_cluster_internal_with_the_same_flags() -> None:
    docs = load_docs(MLFLOW_K8S)
    kinds = [doc["kind"] for doc in docs]
    assert "Deployment" in kinds and "Service" in kinds
    check_services_internal(docs)
    check_no_literal_secrets(docs)
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    check_pod_template(deployment["spec"]["template"], "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["mlflow", "server"]
    check_mlflow_flags(container["args"])
    compose_flags = mlflow_flags(load_doc(COMPOSE)["services"]["mlflow"]["command"])
    assert mlflow_flags(container["args"]).keys() == compose_flags.keys(), "the same flags as docker-compose.yaml"
    assert container["image"] == load_doc(COMPOSE)["services"]["mlflow"]["image"]
    assert secret_ref(env_map(container)["PGPASSWORD"])


def test_service_check_fails_on_a_load_balancer() -> None:
    docs = load_docs(MLFLOW_K8S)
    for doc in docs:
        if doc["kind"] == "Service":
            doc["spec"]["type"] = "LoadBalancer"
    with pytest.raises(AssertionError):
        check_services_internal(docs)


# --- tests: the image -------------------------------------------------------------------------


def test_dockerfile_pins_ray_and_installs_llmlab() -> None:
    instructions = dockerfile_instructions(CLUSTER / "Dockerfile")
    froms = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"rayproject/ray:2\.60\.\d+-py3(\d+)-gpu", froms[0])
    assert match, f"FROM must pin an official Ray 2.60 GPU image, got {froms[0]!r}"
    minimum = re.search(r'requires-python\s*=\s*">=3\.(\d+)"', (REPO / "pyproject.toml").read_text())
    assert minimum and int(match.group(1)) >= int(minimum.group(1)), "the image's Python is one llmlab supports"

    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", runs), "the image installs llmlab from the repository"
    assert "ray[default,train,tune,data]==2.60" in runs, "pip must keep the base image's Ray"
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for part in ("pyproject.toml", "platform", "experiments"):
        assert part in copied, f"the image needs {part}"
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image runs as the base image's non-root user"


def test_dockerignore_keeps_the_venv_out() -> None:
    patterns = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in patterns and ".git" in patterns
