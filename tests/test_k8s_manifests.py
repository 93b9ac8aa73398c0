"""deploy/kubernetes: valid against Kubernetes 1.30's schemas (offline), rendered by kustomize, and every
flag and setting it passes exists in the programs it runs."""

import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from tests.procs import script

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30"
KUBECTL = shutil.which("kubectl")


def manifest_documents():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [(name, doc) for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    return docs


def ident(item):
    name, doc = item
    return f"{name}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.fixture
def no_network(monkeypatch):
    """Any outbound connection fails: the schemas must come from the installed package."""

    def refuse(*args, **kwargs):
        raise OSError("network access during schema validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("item", manifest_documents(), ids=ident)
def test_manifest_is_valid_against_the_1_30_schemas_offline(item, no_network):
    _, doc = item
    # strict: no field the schema does not know (a typo is an error, not ignored as kubectl would).
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_validation_catches_a_misspelt_field():
    _, deployment = next(item for item in manifest_documents() if item[1]["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def render(path: pathlib.Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl on PATH: kustomize rendering not checked (schemas are)")
def test_kustomize_renders_valid_objects_in_the_namespace(tmp_path):
    docs = render(DEPLOY)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert "Deployment/katyusha" in kinds and "Deployment/katyusha-control" in kinds and "Deployment/hello" in kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "katyusha", doc["metadata"]["name"]
    images = {c["image"] for d in docs if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {"katyusha:latest"}
    # A user's overlay sets their own image through the images: entry.
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, overlay)],
        "images": [{"name": "katyusha", "newName": "registry.example/team/katyusha", "newTag": "0.1.0"}],
    }))  # fmt: skip
    images = {
        c["image"] for d in render(overlay) if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"registry.example/team/katyusha:0.1.0"}


def deployments():
    return {doc["metadata"]["name"]: doc for _, doc in manifest_documents() if doc["kind"] == "Deployment"}


def test_katyusha_replicas_probes_and_graceful_stop():
    spec = deployments()["katyusha"]["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    admin = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
    assert flag_value(container["args"], "--admin-port") == str(admin)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["resources"]["requests"]
    env = {e["name"]: e for e in container["env"]}
    drain = float(env["KATYUSHA_SHUTDOWN_TIMEOUT"]["value"].rstrip("s"))
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain


def test_the_seeds_configmap_keys_reach_katyusha():
    configmap = next(doc for _, doc in manifest_documents() if doc["kind"] == "ConfigMap")
    assert configmap["metadata"]["name"] == "config-ikukantai"
    seed_keys = {
        "ikukantai-enable-katyusha", "katyusha-threads", "katyusha-enable-junbanmachi",
        "katyusha-enable-fukabunsan", "katyusha-enable-outoushuugou", "katyusha-junbanmachi-concurrent-request",
    }  # fmt: skip
    assert set(configmap["data"]) == seed_keys
    container = deployments()["katyusha"]["spec"]["template"]["spec"]["containers"][0]
    mapped = {
        e["valueFrom"]["configMapKeyRef"]["key"]: e["name"] for e in container["env"]
        if "configMapKeyRef" in e.get("valueFrom", {})
    }
    # Each key arrives in the environment variable katyusha reads it from (docs/configuration.md).
    assert mapped == {key: key.upper().replace("-", "_") for key in seed_keys}


def test_the_app_pod_runs_nonna_in_front_of_the_app_on_localhost():
    pod = deployments()["hello"]["spec"]["template"]["spec"]
    nonna, app = (c for c in pod["containers"])
    assert nonna["args"][0] == "nonna" and app["args"][0] == "sim-backend"
    assert "--upstream=http://127.0.0.1:9001" in nonna["args"] and "--host=127.0.0.1" in app["args"]
    assert "--port=9001" in app["args"]
    service = next(doc for _, doc in manifest_documents() if doc["kind"] == "Service" and doc["metadata"]["name"] == "hello")
    assert service["spec"]["clusterIP"] == "None"  # headless: EndpointSlices list the pods themselves
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "nonna-admin"}


def flag_value(args: list[str], flag: str) -> str:
    """The value of ``flag`` in ``args``, given as ``--flag=value`` or ``--flag value``."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag:
            return args[index + 1]
    raise AssertionError(f"no {flag} in {args}")


def container_environment(container: dict, pod_name: str) -> dict[str, str]:
    """The container's environment as the kubelet would set it (ConfigMap keys and downward API resolved)."""
    configmap = next(doc for _, doc in manifest_documents() if doc["kind"] == "ConfigMap")["data"]
    fields = {"metadata.name": pod_name, "metadata.namespace": "katyusha", "spec.nodeName": "node-1"}
    env = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "configMapKeyRef" in source:
            env[entry["name"]] = configmap[source["configMapKeyRef"]["key"]]
        else:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
    return env


def expanded(args: list[str], env: dict[str, str]) -> list[str]:
    """``args`` with ``$(VAR)`` replaced as Kubernetes does."""
    return [re.sub(r"\$\(([A-Z_][A-Z0-9_]*)\)", lambda m: env[m[1]], arg) for arg in args]


def objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifest_documents() if doc["kind"] == kind}


def mounted_token(container: dict, argv: list[str], folder) -> list[str]:
    """``argv`` with the admin token file the Secret's volume holds written under ``folder``."""
    flag = next(arg for arg in argv if arg.startswith("--admin-token-file="))
    path = flag.partition("=")[2]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["name"] == "admin-token" and mount.get("readOnly")
    secret = objects("Secret")["katyusha-admin-token"]
    token = folder / "token"
    token.write_text(secret["stringData"][path.rsplit("/", 1)[1]])
    return [f"--admin-token-file={token}" if arg == flag else arg for arg in argv]


def test_katyusha_follows_the_hello_service_and_shares_it_with_its_peers(tmp_path):
    from katyusha.kubernetes.refs import ServiceRef
    from katyusha.proxy import cli
    from katyusha.proxy.config import load

    container = deployments()["katyusha"]["spec"]["template"]["spec"]["containers"][0]
    env = container_environment(container, "katyusha-5d8f7-x2x9k")
    # The admin port listens on 0.0.0.0: katyusha starts only with the token the Secret mounts.
    argv = mounted_token(container, expanded(container["args"], env), tmp_path)
    assert argv[:2] == ["katyusha", "serve"]
    config = load(flags=cli.flags_from_args(cli.build_parser().parse_args(argv[2:])), environ=env)
    # The namespace and the replica's name come from the downward API.
    assert config.kubernetes_targets == {"default": ServiceRef("katyusha", "hello", "http", "nonna-admin")}
    assert config.kubernetes_replicas == (ServiceRef("katyusha", "katyusha-admin"), "katyusha-5d8f7-x2x9k")
    # The Services and port names it follows exist: hello's data and nonna ports, katyusha's admin Service.
    services = objects("Service")
    assert {p["name"] for p in services["hello"]["spec"]["ports"]} >= {"http", "nonna-admin"}
    assert services["katyusha-admin"]["spec"]["selector"] == deployments()["katyusha"]["spec"]["selector"]["matchLabels"]
    # Subsetting applies: hello's pods declare their container concurrency.
    assert int(services["hello"]["metadata"]["annotations"]["katyusha.dev/container-concurrency"]) > 0


def test_the_control_plane_probes_its_admin_port_and_scales_what_exists():
    from katyusha.kubernetes.__main__ import _parser
    from katyusha.kubernetes.controlplane import ScaleTarget

    container = deployments()["katyusha-control"]["spec"]["template"]["spec"]["containers"][0]
    env = container_environment(container, "katyusha-control-6c9b-q7w2e")
    argv = expanded(container["args"], env)
    assert argv[:4] == ["python", "-m", "katyusha.kubernetes", "control"]
    args = _parser().parse_args(argv[3:])
    assert (args.namespace, args.identity) == ("katyusha", "katyusha-control-6c9b-q7w2e")
    admin = next(p["containerPort"] for p in container["ports"] if p["name"] == "admin")
    assert args.admin_port == admin and args.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "admin"}
    for text in args.scale:
        target = ScaleTarget.parse(text, args.namespace)
        assert target.deployment.name in deployments()
        assert target.service is None or target.service.name in objects("Service")
    name, _, port = args.katyusha.partition(":")
    assert port in {p["name"] for p in objects("Service")[name]["spec"]["ports"]}


def help_flags(argv: list[str]) -> set[str]:
    out = subprocess.run(argv + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))


def test_every_flag_in_the_manifests_exists():
    programs = {
        "katyusha": [script("katyusha"), "serve"],
        "nonna": [script("nonna")],
        "sim-backend": [script("sim-backend")],
        "python": [sys.executable, "-m", "katyusha.kubernetes", "control"],
    }
    checked = 0
    for deployment in deployments().values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container["args"]
            program = args[0]
            flags = {a.split("=", 1)[0] for a in args if a.startswith("--")}
            known = help_flags(programs[program])
            assert flags <= known, f"{deployment['metadata']['name']}/{container['name']}: {sorted(flags - known)}"
            checked += 1
    assert checked == 4


def test_every_katyusha_environment_variable_is_a_documented_setting():
    # Settings, and the downward API's POD_NAME/POD_NAMESPACE that the discovery settings fall back on.
    documented = set(re.findall(r"`((?:KATYUSHA|IKUKANTAI|POD)_[A-Z_]+)`", (ROOT / "docs" / "katyusha.md").read_text()))
    container = deployments()["katyusha"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in container["env"]} <= documented


def test_rbac_grants_what_discovery_scaling_and_the_lease_need():
    roles = {doc["metadata"]["name"]: doc for _, doc in manifest_documents() if doc["kind"] == "Role"}

    def allowed(role, group, resource):
        return {v for rule in roles[role]["rules"] if group in rule["apiGroups"] and resource in rule["resources"]
                for v in rule["verbs"]}  # fmt: skip

    assert {"list", "watch"} <= allowed("katyusha-discovery", "discovery.k8s.io", "endpointslices")
    assert {"get", "patch"} <= allowed("katyusha-control", "apps", "deployments/scale")
    assert {"get", "create", "update"} <= allowed("katyusha-control", "coordination.k8s.io", "leases")
    assert "patch" in allowed("katyusha-control", "coordination.k8s.io", "leases")  # what katyusha's elector sends
    assert not allowed("katyusha-control", "apps", "deployments") - {"get"}  # scale only through the subresource
