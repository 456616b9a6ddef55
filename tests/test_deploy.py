"""The deploy/ recipes are valid: Kubernetes manifests against the Kubernetes and dask-kubernetes schemas
(strictly: a misspelt field fails), the kustomization builds into consistent resources, the dask config
recipes carry the keys of the profile contract (PROFILES.md), and the job service's systemd unit and
configuration examples keep `bigseg serve` on loopback, its jobs alive across restarts, and its keys valid."""
from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
PROFILES = ROOT / "deploy" / "profiles"
SYSTEMD = ROOT / "deploy" / "systemd"
OPERATOR_GROUP = "kubernetes.dask.org"
NOT_MANIFESTS = {"kustomization.yaml"}
#: kubectl 1.32 is what the project's machines carry; the newest schemas kubernetes-validate ships come too.
KUBECTL_VERSION = "1.32.0"
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_MANIFESTS)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=YAML_LOADER) if d]


def all_documents() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in manifest_files() for d in documents(p)]


def is_operator_resource(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] == OPERATOR_GROUP


# --- core kinds: the Kubernetes OpenAPI schemas of kubernetes-validate ----------------------------------------

def k8s_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version
    return sorted({KUBECTL_VERSION, latest_version()})


def validate_core(doc: dict, version: str) -> None:
    """Raise kubernetes_validate's ValidationError unless ``doc`` is valid, unknown fields included."""
    from kubernetes_validate.utils import validate
    validate(doc, version, strict=True)


def test_every_core_manifest_passes_strict_kubernetes_validation():
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    core = [(name, d) for name, d in all_documents() if not is_operator_resource(d)]
    kinds = {d["kind"] for _, d in core}
    assert kinds >= {"Namespace", "ServiceAccount", "Job", "Deployment", "Service", "PersistentVolumeClaim",
                     "Secret", "Role", "RoleBinding"}, kinds
    for version in k8s_versions():
        for name, doc in core:
            validate_core(doc, version)      # raises with the path of the offending field


def test_strict_kubernetes_validation_rejects_a_misspelt_field_and_a_wrong_type():
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    from kubernetes_validate.utils import ValidationError
    deployment = next(d for _, d in all_documents() if d["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    for broken in (misspelt, wrong_type):
        with pytest.raises(ValidationError):
            validate_core(broken, KUBECTL_VERSION)


def test_kubernetes_validate_cli_accepts_the_manifests():
    """The command users run: `kubernetes-validate -k 1.32.0 --strict FILES` exits 0 (it only warns on CRDs)."""
    exe = shutil.which("kubernetes-validate")
    if exe is None:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    r = subprocess.run([exe, "-k", KUBECTL_VERSION, "--strict", "--quiet", *map(str, manifest_files())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ERROR" not in r.stdout


# --- operator kinds: the CRD OpenAPI schemas shipped in the dask-kubernetes package -----------------------------

def operator_package() -> Path:
    spec = importlib.util.find_spec("dask_kubernetes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("dask-kubernetes is not installed (pip install dask-kubernetes)")
    return Path(next(iter(spec.submodule_search_locations)))


def operator_crds() -> dict[str, dict]:
    """The dask-kubernetes CRDs with resolved schemas, by kind, read from the installed package (not imported)."""
    return _operator_crds(operator_package())


@functools.cache
def _operator_crds(pkg: Path) -> dict[str, dict]:
    crds = {}
    for path in sorted(pkg.glob("operator/deployment/helm/*/crds/dask*.yaml")):
        for doc in documents(path):
            if doc.get("kind") == "CustomResourceDefinition" and doc["spec"]["group"] == OPERATOR_GROUP:
                crds[doc["spec"]["names"]["kind"]] = doc
    assert {"DaskCluster", "DaskWorkerGroup"} <= crds.keys(), f"no resolved CRDs under {pkg}"
    return crds


def structural(schema: dict, root: bool = True) -> dict:
    """A CRD's openAPIV3Schema as JSON Schema the way the API server applies it with field validation
    Strict (kubectl's default): unknown fields are errors, apiVersion/kind/metadata are implicit at the root,
    ``x-kubernetes-int-or-string`` takes an integer or a string."""
    s = {k: (structural(v, False) if isinstance(v, dict) and k in ("items", "additionalProperties") else v)
         for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        s["properties"] = {k: structural(v, False) for k, v in schema["properties"].items()}
    if root:
        s.setdefault("properties", {}).update(apiVersion={"type": "string"}, kind={"type": "string"},
                                              metadata={"type": "object"})
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    return s


def operator_errors(doc: dict, crds: dict[str, dict]) -> list[str]:
    crd = crds[doc["kind"]]
    group, version = doc["apiVersion"].split("/")
    assert group == crd["spec"]["group"]
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{doc['kind']} {version}: the CRD serves {sorted(served)}"
    schema = structural(served[version]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def operator_documents() -> list[tuple[str, dict]]:
    return [(name, d) for name, d in all_documents() if is_operator_resource(d)]


def test_dask_operator_resources_validate_against_the_operator_crds():
    crds = operator_crds()
    docs = operator_documents()
    assert {d["kind"] for _, d in docs} == {"DaskCluster", "DaskWorkerGroup"}
    for name, doc in docs:
        assert operator_errors(doc, crds) == [], name


def test_the_operator_own_example_passes_the_strict_crd_check():
    """The strict reading of the CRD is not stricter than the operator: its own test resources pass."""
    crds = operator_crds()
    pkg = operator_package()
    examples = sorted(pkg.glob("operator/controller/tests/resources/simple*.yaml"))
    if not examples:
        pytest.skip(f"this dask-kubernetes build ships no example resources under {pkg}")
    checked = 0
    for path in examples:
        for doc in documents(path):
            if doc["kind"] in crds:
                assert operator_errors(doc, crds) == [], path.name
                checked += 1
    assert checked


@pytest.mark.parametrize("breakage", ["misspelt field", "wrong type", "quantity as number", "missing field"])
def test_a_broken_dask_cluster_fails_the_crd_check(breakage):
    crds = operator_crds()
    cluster = copy.deepcopy(next(d for _, d in operator_documents() if d["kind"] == "DaskCluster"))
    worker = cluster["spec"]["worker"]
    if breakage == "misspelt field":
        worker["replica"] = worker.pop("replicas")
    elif breakage == "wrong type":
        worker["replicas"] = "four"
    elif breakage == "quantity as number":
        worker["spec"]["containers"][0]["resources"]["requests"]["cpu"] = 1
    else:
        del worker["spec"]["containers"][0]["name"]
    errors = operator_errors(cluster, crds)
    assert len(errors) == 1, errors
    assert errors[0].startswith("spec.worker"), errors


# --- the kustomization and the consistency of names ------------------------------------------------------------

@pytest.fixture(scope="module")
def built() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot run `kubectl kustomize deploy/kubernetes`")
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind_name(docs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kustomize_builds_the_expected_resources_in_one_namespace(built):
    assert sorted(by_kind_name(built)) == sorted([
        ("Namespace", "bigseg"), ("ServiceAccount", "bigseg"), ("ConfigMap", "bigseg-job"),
        ("ConfigMap", "bigseg-dask-config"), ("DaskCluster", "bigseg"), ("Job", "bigseg-segment"),
        ("Deployment", "bigseg-serve"), ("Service", "bigseg-serve"), ("ConfigMap", "bigseg-serve-config"),
        ("PersistentVolumeClaim", "bigseg-serve-data")])
    for d in built:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "bigseg", d["kind"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "bigseg", d["kind"]
    for d in built:     # as applied: with kustomize's namespace and labels, the generated ConfigMaps too
        if not is_operator_resource(d) and importlib.util.find_spec("kubernetes_validate"):
            validate_core(d, KUBECTL_VERSION)
        if is_operator_resource(d) and importlib.util.find_spec("dask_kubernetes"):
            assert operator_errors(d, operator_crds()) == [], d["kind"]
    assert not any(d["kind"] == "Secret" for d in built), "applying the kustomization must not overwrite secrets"


def test_job_spec_and_dask_config_travel_as_config_maps(built):
    res = by_kind_name(built)
    job_spec = res[("ConfigMap", "bigseg-job")]["data"]["job.yaml"]
    assert job_spec == (K8S / "config" / "job.yaml").read_text()
    spec = yaml.safe_load(job_spec)
    assert spec == {"version": 1, "input": {"url": "s3://bucket/image.zarr", "level": 0, "channel": 0},
                    "method": {"name": "watershed", "diameter": "8um"}, "output": {"name": "nuclei"}}
    from bigseg.spec import from_dict
    assert from_dict(spec).method.diameter == "8um"  # a valid job for this bigseg
    dask_config = yaml.safe_load(res[("ConfigMap", "bigseg-dask-config")]["data"]["bigseg.yaml"])
    cluster = res[("DaskCluster", "bigseg")]
    expected = f"tcp://{cluster['metadata']['name']}-scheduler.{cluster['metadata']['namespace']}.svc:8786"
    assert dask_config["bigseg"]["profiles"]["cluster"] == {"kind": "address", "address": expected}
    words = [w for cm in built if cm["kind"] == "ConfigMap" for text in cm["data"].values()
             for w in flatten(yaml.safe_load(text))]
    assert not [w for w in words if re.search(r"(?i)aws|secret|password|token|storage_options|^key$", w)]


def flatten(node) -> list[str]:
    """Every key and scalar of a parsed YAML document, as text."""
    if isinstance(node, dict):
        return [w for k, v in node.items() for w in [str(k), *flatten(v)]]
    if isinstance(node, list):
        return [w for v in node for w in flatten(v)]
    return [str(node)]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def test_job_runs_the_spec_with_the_cluster_profile_and_mounts_both_config_maps(built):
    res = by_kind_name(built)
    job = res[("Job", "bigseg-segment")]
    pod = pod_spec(job)
    (container,) = pod["containers"]
    assert container["args"] == ["segment", "--spec", "/etc/bigseg/job.yaml", "--profile", "cluster"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"]}
    assert {volumes[n]: mounts[n] for n in mounts} == {"bigseg-job": "/etc/bigseg",
                                                       "bigseg-dask-config": "/etc/dask"}
    assert pod["serviceAccountName"] == "bigseg" and ("ServiceAccount", "bigseg") in res


def secret_refs(pod: dict) -> dict[str, tuple[str, str]]:
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for c in pod["containers"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_credentials_come_from_the_secrets_the_example_defines(built):
    secrets = {d["metadata"]["name"]: set(d["stringData"]) for d in documents(K8S / "secrets.example.yaml")}
    res = by_kind_name(built)
    s3 = {k: ("bigseg-s3", k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}
    assert secret_refs(pod_spec(res[("Job", "bigseg-segment")])) == s3
    assert secret_refs(res[("DaskCluster", "bigseg")]["spec"]["worker"]["spec"]) == s3
    assert secret_refs(pod_spec(res[("Deployment", "bigseg-serve")])) == s3   # its jobs' runners inherit them
    gpu = next(d for _, d in operator_documents() if d["kind"] == "DaskWorkerGroup")
    for name, key in [*s3.values(), *secret_refs(gpu["spec"]["worker"]["spec"]).values()]:
        assert key in secrets[name], (name, key)


def flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argument list (each flag given once)."""
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def test_job_service_binds_all_interfaces_only_behind_a_cluster_ip(built):
    res = by_kind_name(built)
    deployment, service = res[("Deployment", "bigseg-serve")], res[("Service", "bigseg-serve")]
    (container,) = pod_spec(deployment)["containers"]
    args = container["args"]
    assert args[0] == "serve" and flag(args, "--host") == "0.0.0.0"
    (http,) = container["ports"]
    assert int(flag(args, "--port")) == http["containerPort"]
    assert service["spec"]["type"] == "ClusterIP"
    assert not any(d["kind"] == "Ingress" or d.get("spec", {}).get("type") in ("NodePort", "LoadBalancer")
                   for d in built), "the plain-HTTP server is reached only inside the cluster (or via a TLS Ingress)"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == http["name"]


def test_the_documented_ingress_terminates_tls_in_front_of_the_job_service(built):
    """deploy/README.md's Ingress example (not applied by the kustomization) is valid and reaches the Service."""
    pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "deploy" / "README.md").read_text(), re.S)
    (ingress,) = [d for d in map(yaml.safe_load, blocks) if d.get("kind") == "Ingress"]
    validate_core(ingress, KUBECTL_VERSION)
    service = by_kind_name(built)[("Service", "bigseg-serve")]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": service["metadata"]["name"],
                                          "port": {"name": service["spec"]["ports"][0]["name"]}}
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]


def test_job_service_is_one_pod_replaced_not_rolled_and_probed_on_health(built):
    """Two servers on one database would both dispatch jobs: 1 replica, Recreate (the old pod ends first)."""
    deployment = by_kind_name(built)[("Deployment", "bigseg-serve")]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = pod_spec(deployment)["containers"]
    probes = {k: container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    for kind, probe in probes.items():      # /health is the one route that answers without a token
        assert probe["httpGet"] == {"path": "/api/v1/health", "port": container["ports"][0]["name"]}, kind


def test_job_service_keeps_its_data_on_a_volume_and_reads_its_config_map(built):
    res = by_kind_name(built)
    deployment = res[("Deployment", "bigseg-serve")]
    pod = pod_spec(deployment)
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = volumes[mounts[flag(container["args"], "--data-dir")]]
    claim = res[("PersistentVolumeClaim", data["persistentVolumeClaim"]["claimName"])]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]   # the volume is writable
    config_path = Path(flag(container["args"], "--config"))
    config_map = res[("ConfigMap", volumes[mounts[str(config_path.parent)]]["configMap"]["name"])]
    assert config_map["data"][config_path.name] == (K8S / "config" / "service.yaml").read_text()
    assert volumes[mounts["/etc/dask"]]["configMap"]["name"] == "bigseg-dask-config"   # its jobs' profiles


def worker_args(doc: dict) -> list[str]:
    (container,) = doc["spec"]["worker"]["spec"]["containers"]
    return [*container["command"], *container["args"]]


def test_workers_are_single_threaded_with_memory_limits_and_gpu_workers_advertise_the_gpu(built):
    cluster = by_kind_name(built)[("DaskCluster", "bigseg")]
    args = worker_args(cluster)
    assert args[:2] == ["dask", "worker"] and args[args.index("--nthreads") + 1] == "1"
    # dask's default memory limit ("auto") is the container's limit divided by the node's cores
    assert args[args.index("--memory-limit") + 1] == "1"
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert worker["resources"]["limits"]["memory"] == worker["resources"]["requests"]["memory"]
    gpu = next(d for _, d in operator_documents() if d["kind"] == "DaskWorkerGroup")
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    args = worker_args(gpu)
    assert args[args.index("--nthreads") + 1] == "1" and args[args.index("--resources") + 1] == "GPU=1"
    assert args[args.index("--memory-limit") + 1] == "1"
    (container,) = gpu["spec"]["worker"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for doc in [cluster, gpu, *(d for d in built if d["kind"] in ("Job", "Deployment"))]:
        pods = ([doc["spec"]["worker"]["spec"]] + ([doc["spec"]["scheduler"]["spec"]] if "scheduler" in doc["spec"]
                                                  else []) if is_operator_resource(doc) else [pod_spec(doc)])
        for pod in pods:
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0


# --- dask config recipes: the profile contract ----------------------------------------------------------------

#: PROFILES.md, and the fields bigseg.cluster.profiles adds (address timeout; jobqueue adapt; gateway adapt and
#: gpu_options; kubernetes gpu_workers and gpu_resources): kind -> (required keys, allowed keys).
CONTRACT = {
    "local": ({"kind"}, {"kind", "workers", "gpus", "storage_options"}),
    "address": ({"kind"}, {"kind", "address", "timeout", "storage_options"}),
    "jobqueue": ({"kind", "system", "cluster"},
                 {"kind", "system", "cluster", "scale", "adapt", "gpu", "storage_options"}),
    "gateway": ({"kind", "address"}, {"kind", "address", "proxy_address", "auth", "options", "scale", "adapt", "gpu",
                                      "gpu_options", "storage_options"}),
    "kubernetes": ({"kind", "image"}, {"kind", "name", "image", "namespace", "n_workers", "resources", "env", "gpu",
                                       "gpu_workers", "gpu_resources", "storage_options"}),
}
RECIPES = {"slurm.yaml": ("slurm", "jobqueue"), "gateway.yaml": ("gateway", "gateway"),
           "kubernetes.yaml": ("kubernetes", "kubernetes"), "address.yaml": ("shared", "address")}


def recipe(file: str) -> dict:
    return yaml.safe_load((PROFILES / file).read_text())


def test_profile_recipes_are_the_shipped_files():
    assert sorted(p.name for p in PROFILES.glob("*.yaml")) == sorted(RECIPES)


@pytest.mark.parametrize("file", sorted(RECIPES))
def test_profile_recipe_has_the_keys_of_its_kind(file):
    name, kind = RECIPES[file]
    config = recipe(file)
    assert list(config) == ["bigseg"] and list(config["bigseg"]) == ["profiles"], "only profiles, no default"
    (got,) = config["bigseg"]["profiles"].items()
    assert got[0] == name
    profile = got[1]
    required, allowed = CONTRACT[kind]
    assert profile["kind"] == kind
    assert required <= profile.keys() <= allowed, (profile.keys() - allowed, required - profile.keys())
    if kind == "jobqueue":
        assert profile["system"] == "slurm"
        assert profile["cluster"]["cores"] == profile["cluster"]["processes"] == 1   # single-threaded workers
        assert len(profile["scale"]) == 1 and profile["scale"].keys() <= {"jobs", "n"}
    if kind == "gateway":
        assert profile["auth"]["kind"] == "basic" and "password" not in profile["auth"]
        assert profile["auth"]["password_env"] == "DASK_GATEWAY_PASSWORD"
    if kind == "kubernetes":
        assert profile["resources"].keys() <= {"requests", "limits"}
    if kind == "address":
        assert profile["address"].startswith("tcp://")


def test_profile_recipes_copied_into_one_dask_config_folder_merge_into_all_profiles(tmp_path):
    import dask.config
    for file in RECIPES:
        shutil.copy(PROFILES / file, tmp_path / file)
    merged = dask.config.collect(paths=[str(tmp_path)], env={})
    assert sorted(merged["bigseg"]["profiles"]) == sorted(name for name, _ in RECIPES.values())


@pytest.mark.parametrize("file", sorted(RECIPES))
def test_profile_recipe_validates_with_the_profile_models(file):
    """The recipes parse with bigseg's own profile models (bigseg.cluster.profiles.parse)."""
    profiles = pytest.importorskip("bigseg.cluster.profiles", reason="the profile models are not in this tree yet")
    name, kind = RECIPES[file]
    model = profiles.parse(recipe(file)["bigseg"]["profiles"][name], name)
    assert model.kind == kind


def test_the_in_cluster_dask_config_validates_with_the_profile_models():
    profiles = pytest.importorskip("bigseg.cluster.profiles", reason="the profile models are not in this tree yet")
    config = yaml.safe_load((K8S / "config" / "dask.yaml").read_text())["bigseg"]
    assert profiles.parse(config["profiles"][config["profile"]], config["profile"]).kind == "address"


def image_entrypoint() -> list[str]:
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    return yaml.safe_load(re.findall(r"^ENTRYPOINT (.*)$", text, re.M)[-1])


def test_cluster_specs_of_the_kubernetes_profile_validate_and_run_dask_on_the_bigseg_image():
    """What the `kubernetes` profile kind creates (bigseg.cluster.kubernetes) passes the operator's CRD schemas,
    and its pods run `dask scheduler` / single-threaded `dask worker` despite the image's `bigseg` entrypoint
    (a container's `args` alone are appended to the entrypoint)."""
    kube = pytest.importorskip("bigseg.cluster.kubernetes", reason="the kubernetes backend is not in this tree yet")
    from bigseg.cluster import profiles
    from bigseg.cluster._backend import Request
    crds = operator_crds()
    assert image_entrypoint() == ["bigseg"]
    data = {**recipe("kubernetes.yaml")["bigseg"]["profiles"]["kubernetes"], "gpu": True}
    profile = profiles.parse(data, "kubernetes")
    cluster = kube.cluster_spec(profile, Request(), "bigseg-test")
    group = {"apiVersion": f"{OPERATOR_GROUP}/v1", "kind": "DaskWorkerGroup", "metadata": {"name": "bigseg-test-gpu"},
             "spec": {"cluster": "bigseg-test", "worker": kube.gpu_worker_spec(profile)}}
    for doc in (cluster, group):
        assert operator_errors(doc, crds) == [], doc["kind"]
    parts = [(cluster, "scheduler"), (cluster, "worker"), (group, "worker")]
    for doc, part in parts:
        (container,) = doc["spec"][part]["spec"]["containers"]
        command = [*container.get("command", image_entrypoint()), *container["args"]]
        assert command[:2] == ["dask", part], (doc["kind"], part, command)
        if part == "worker":      # single-threaded, with all of the container's memory (not limit / cores)
            assert command[command.index("--nthreads") + 1] == "1", command
            assert "--memory-limit" in command, command


# --- the job service outside Kubernetes: systemd unit and service.yaml ----------------------------------------

UNIT = SYSTEMD / "bigseg.service"
#: The keys `bigseg serve --config` reads (CONTRACT.md): the example configurations use no others.
SERVICE_KEYS = {"host", "port", "data-dir", "database", "max-attempts", "cancel-grace", "heartbeat", "roots",
                "models", "limits", "max-body-bytes", "profiles"}
LIMIT_KEYS = {"max-queued", "max-running"}
SERVICE_CONFIGS = {"systemd": SYSTEMD / "service.yaml", "kubernetes": K8S / "config" / "service.yaml"}


def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file as section -> key -> values in order (a key may repeat; `\\` continues a line)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current, pending = None, ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a unit file line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict, section: str, key: str) -> str:
    (value,) = unit[section][key]
    return value


def exec_start() -> list[str]:
    return shlex.split(one(unit_file(UNIT), "Service", "ExecStart"))


def service_config(which: str) -> dict:
    return yaml.safe_load(SERVICE_CONFIGS[which].read_text())


def test_systemd_unit_runs_bigseg_serve_on_loopback_as_its_own_user():
    unit = unit_file(UNIT)
    argv = exec_start()
    assert Path(argv[0]).name == "bigseg" and Path(argv[0]).is_absolute() and argv[1] == "serve", argv
    assert flag(argv, "--host") == "127.0.0.1"
    assert one(unit, "Service", "User") == "bigseg" and one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_systemd_restart_stops_only_the_server_so_running_jobs_survive():
    """Runners run in their own sessions but in the unit's control group: the default KillMode (control-group)
    would end them at every restart; `process` signals the server alone, and the next server adopts them."""
    unit = unit_file(UNIT)
    assert one(unit, "Service", "KillMode") == "process"
    environment = dict(e.split("=", 1) for e in unit["Service"]["Environment"])
    # a private /tmp is removed when the unit stops: jobs' temporary files must live where a restart leaves them
    assert Path(environment["TMPDIR"]).is_relative_to(flag(exec_start(), "--data-dir"))


def test_systemd_hardening_leaves_the_data_dir_and_every_rw_root_writable():
    unit = unit_file(UNIT)
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "NoNewPrivileges") == "yes" and one(unit, "Service", "PrivateTmp") == "yes"
    writable = [Path(p.lstrip("-")) for line in unit["Service"]["ReadWritePaths"] for p in line.split()]
    config = service_config("systemd")
    wanted = [flag(exec_start(), "--data-dir"), config["data-dir"]]
    wanted += [root.rsplit(":", 1)[0] for root in config["roots"] if root.endswith(":rw")]
    for path in wanted:
        assert any(Path(path).is_relative_to(w) for w in writable), f"{path} is not in ReadWritePaths"
    state = Path("/var/lib") / one(unit, "Service", "StateDirectory").split()[0]
    assert state == Path(flag(exec_start(), "--data-dir")), "systemd creates the data dir, owned by the user"


def test_systemd_analyze_verify_accepts_the_unit_and_rejects_a_misspelt_key(tmp_path):
    """systemd's own parser: no unknown keys or bad values (ExecStart pointed at an existing program, as
    verify checks that it exists)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    program = shutil.which("bigseg") or sys.executable
    text = UNIT.read_text().replace(f"ExecStart={exec_start()[0]} ", f"ExecStart={program} ")
    assert text != UNIT.read_text()

    def verify(unit_text: str) -> tuple[int, str]:
        path = tmp_path / "bigseg.service"
        path.write_text(unit_text)
        r = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr
    code, out = verify(text)
    assert code == 0 and out.strip() == "", out
    code, out = verify(text.replace("KillMode=process", "KilMode=process"))
    assert "Unknown key 'KilMode'" in out, out


def test_systemd_flags_agree_with_its_service_yaml():
    config, argv = service_config("systemd"), exec_start()
    assert flag(argv, "--config") == "/etc/bigseg/service.yaml"
    assert config["host"] == flag(argv, "--host") and config["port"] == int(flag(argv, "--port"))
    assert config["data-dir"] == flag(argv, "--data-dir")


@pytest.mark.parametrize("which", sorted(SERVICE_CONFIGS))
def test_service_yaml_examples_use_only_the_service_keys(which):
    config = service_config(which)
    assert config.keys() <= SERVICE_KEYS, config.keys() - SERVICE_KEYS
    if which == "systemd":      # the full example shows every key
        assert config.keys() == SERVICE_KEYS, SERVICE_KEYS - config.keys()
    assert config["limits"].keys() == LIMIT_KEYS and all(isinstance(v, int) and v > 0
                                                         for v in config["limits"].values())
    for key in ("max-attempts", "cancel-grace", "heartbeat", "max-body-bytes"):
        assert isinstance(config[key], int) and config[key] > 0, key
    assert config["roots"] and all(re.fullmatch(r"(/|s3://)\S+:(rw|ro)", r) for r in config["roots"])
    assert isinstance(config["models"], list) and all(m.startswith("/") for m in config["models"])
    words = flatten(config)
    assert not [w for w in words if re.search(r"(?i)aws|secret|token|storage_options", w)]


def test_service_yaml_profiles_validate_with_the_profile_models():
    profiles = pytest.importorskip("bigseg.cluster.profiles", reason="the profile models are not in this tree yet")
    config = service_config("systemd")["profiles"]
    assert {name: profiles.parse(data, name).kind for name, data in config.items()} == {
        name: data["kind"] for name, data in config.items()}


def test_service_yaml_roots_parse_with_the_service_path_rules():
    paths = pytest.importorskip("bigseg.service.paths", reason="bigseg.service.paths is not in this tree yet")
    for which in sorted(SERVICE_CONFIGS):
        for text in service_config(which)["roots"]:
            root = paths.parse_root(text)
            assert root.mode == text.rsplit(":", 1)[1], text


def test_service_yaml_examples_load_with_the_service_config_loader():
    config = pytest.importorskip("bigseg.service.config", reason="bigseg.service.config is not in this tree yet")
    for which, path in sorted(SERVICE_CONFIGS.items()):
        data = yaml.safe_load(path.read_text())
        loaded = config.load(path)
        assert loaded.max_attempts == data["max-attempts"], which


def test_the_flags_the_recipes_pass_are_flags_of_bigseg_serve(built):
    deployment = by_kind_name(built)[("Deployment", "bigseg-serve")]
    (container,) = pod_spec(deployment)["containers"]
    r = subprocess.run([sys.executable, "-c", "import sys; from bigseg.cli import main; sys.exit(main())",
                        "serve", "--help"], capture_output=True, text=True, timeout=120)
    if r.returncode and "invalid choice" in r.stderr:
        pytest.skip("`bigseg serve` is not in this tree yet")
    assert r.returncode == 0, r.stderr
    for args in (exec_start()[2:], container["args"][1:]):
        flags = [a for a in args if a.startswith("--")]
        assert flags and all(re.search(rf"(?m)^\s+(-\w, )?{f}\b", r.stdout) for f in flags), (flags, r.stdout)
