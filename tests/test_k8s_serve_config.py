"""The discovery settings of ``katyusha serve``: what each spelling means, and the errors that name the key."""

import sys

import pytest

from katyusha.core.errors import ConfigError
from katyusha.kubernetes.refs import ServiceRef
from katyusha.proxy import cli
from katyusha.proxy.config import load


def targets(flags=None, environ=None, **kwargs):
    return load(flags=flags, environ=environ or {}, **kwargs).kubernetes_targets


def error(flags, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(flags=flags, environ=environ or {})
    return caught.value


def test_the_default_service_follows_the_flags_service_in_the_pods_namespace():
    flags = {"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-port": "http",
             "kubernetes-admin-port": "nonna-admin"}  # fmt: skip
    assert targets(flags) == {"default": ServiceRef("default", "hello", "http", "nonna-admin")}
    # In a pod the downward API's POD_NAMESPACE gives the namespace; the setting wins over it.
    assert targets(flags, {"POD_NAMESPACE": "demo"})["default"].key == "demo/hello"
    assert targets({**flags, "kubernetes-namespace": "prod"}, {"POD_NAMESPACE": "demo"})["default"].key == "prod/hello"
    assert targets({**flags, "kubernetes-service": "other/hello"}, {"POD_NAMESPACE": "demo"})["default"].key == "other/hello"
    # Numbers are port numbers; the environment spells every key too.
    env = {"KATYUSHA_DISCOVERY": "kubernetes", "KATYUSHA_KUBERNETES_SERVICE": "demo/hello:8012"}
    assert targets(environ=env)["default"] == ServiceRef("demo", "hello", 8012)


def test_each_service_of_the_services_section_follows_its_own(tmp_path):
    config = tmp_path / "katyusha.yaml"
    config.write_text(
        "discovery: kubernetes\n"
        "kubernetes-namespace: demo\n"
        "services:\n"
        "  - {name: hello, hosts: [hello.local], kubernetes: {service: hello, port: http, admin-port: nonna-admin}}\n"
        "  - {name: shop, path-prefix: /shop, kubernetes: {service: web/shop, port: 8080, concurrency: 4}}\n"
        "  - {name: fixed, path-prefix: /fixed, pods: ['http://127.0.0.1:9001']}\n"
    )
    found = targets(config_file=str(config))
    assert found == {"hello": ServiceRef("demo", "hello", "http", "nonna-admin"),
                     "shop": ServiceRef("web", "shop", 8080, None, 4)}  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "key", "words"),
    [
        ({"discovery": "dns"}, "discovery", "static, kubernetes"),
        ({"kubernetes-service": "demo/hello"}, "discovery", "discovery is static"),
        ({"discovery": "kubernetes"}, "kubernetes-service", "needs a Service to follow"),
        ({"discovery": "kubernetes", "kubernetes-service": "Demo/hello"}, "kubernetes-service", "namespace"),
        ({"discovery": "kubernetes", "kubernetes-service": "demo/9hello"}, "kubernetes-service", "DNS-1035"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-port": "HTTP"}, "kubernetes-port",
         "port name"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello:http", "kubernetes-port": "web"},
         "kubernetes-service.port", "give the port once"),
        ({"discovery": "kubernetes", "kubernetes-port": "http"}, "kubernetes-port", "kubernetes-service"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-namespace": "Demo"},
         "kubernetes-namespace", "DNS label"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-subset": "true",
          "kubernetes-peers": "katyusha-admin", "kubernetes-pod-name": "Pod_1"}, "kubernetes-pod-name", "pod name"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "pods": ["http://127.0.0.1:9001"]}, "pods",
         "not both"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello",
          "services": [{"name": "a", "kubernetes": {"service": "a"}}]}, "kubernetes-service", "services[i].kubernetes"),
        ({"discovery": "kubernetes", "services": [{"name": "a", "kubernetes": {"service": "a", "ports": "http"}}]},
         "services[0].kubernetes.ports", "unknown field"),
        ({"discovery": "kubernetes", "services": [{"name": "a", "kubernetes": {"port": "http"}}]},
         "services[0].kubernetes.service", "required"),
        ({"discovery": "kubernetes", "services": [
            {"name": "a", "kubernetes": "hello", "pods": ["http://127.0.0.1:9001"]}]}, "services[0].pods", "not both"),
        ({"discovery": "kubernetes", "services": [{"name": "a", "hosts": ["a"], "kubernetes": "hello"},
                                                  {"name": "b", "hosts": ["b"], "kubernetes": "default/hello"}]},
         "services", "both follow default/hello"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-subset": "true"},
         "kubernetes-peers", "admin Service"),
        ({"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-subset": "true",
          "kubernetes-peers": "katyusha-admin"}, "kubernetes-pod-name", "POD_NAME"),
    ],
)  # fmt: skip
def test_bad_discovery_settings_name_the_key(flags, key, words):
    caught = error(flags)
    assert caught.key == key and words in str(caught), str(caught)


def test_subset_takes_the_replicas_name_from_pod_name():
    flags = {"discovery": "kubernetes", "kubernetes-service": "hello", "kubernetes-subset": "true",
             "kubernetes-peers": "katyusha-admin"}  # fmt: skip
    config = load(flags=flags, environ={"POD_NAME": "katyusha-7d9f-abcde", "POD_NAMESPACE": "demo"})
    assert config.kubernetes_replicas == (ServiceRef("demo", "katyusha-admin"), "katyusha-7d9f-abcde")
    # Without subsetting no replica identity is needed, and POD_NAME is not read.
    plain = load(flags={"discovery": "kubernetes", "kubernetes-service": "hello"}, environ={"POD_NAME": "x"})
    assert plain.kubernetes_replicas is None and plain.kubernetes_pod_name is None


def test_a_missing_kubernetes_extra_is_a_config_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kubernetes_asyncio", None)  # as if not installed
    caught = error({"discovery": "kubernetes", "kubernetes-service": "demo/hello"})
    assert caught.key == "discovery" and "pip install 'katyusha[kubernetes]'" in str(caught)
    # Static discovery does not need it.
    assert load(flags={"pods": ["http://127.0.0.1:9001"]}, environ={}).discovery == "static"
    assert cli.main(["--discovery", "kubernetes", "--kubernetes-service", "demo/hello"]) == 2
    assert "katyusha[kubernetes]" in capsys.readouterr().err


def test_an_unusable_kubeconfig_stops_serve_before_it_listens(tmp_path, capsys):
    missing = tmp_path / "absent"
    argv = ["--discovery", "kubernetes", "--kubernetes-service", "demo/hello", "--kubeconfig", str(missing),
            "--port", "0", "--admin-port", "0"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "bad setting kubeconfig" in err and str(missing) in err
