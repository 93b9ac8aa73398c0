"""katyusha's settings: the seed's ConfigMap keys, strict values, precedence YAML < env < flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from katyusha.core.errors import ConfigError
from katyusha.proxy import config
from katyusha.proxy.cli import build_parser, flags_from_args

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-ikukantai
  namespace: knative-serving
data:
  ikukantai-enable-katyusha: "true"
  katyusha-threads: "1"
  katyusha-enable-junbanmachi: "true"
  katyusha-enable-fukabunsan: "false"
  katyusha-enable-outoushuugou: "false"
  katyusha-junbanmachi-concurrent-request: "8"
"""


def load(tmp_path, text: str | None = None, env=None, argv=()):
    path = None
    if text is not None:
        path = tmp_path / "katyusha.yaml"
        path.write_text(text)
    args = build_parser().parse_args(list(argv))
    return config.load(
        flags=flags_from_args(args), config_file=str(path) if path else None, environ=env or {}
    )


def test_whole_configmap_document_is_accepted(tmp_path):
    cfg = load(tmp_path, CONFIGMAP)
    assert cfg.concurrent_request == 8
    assert cfg.l1_limit == 8
    assert cfg.enable_fukabunsan is False
    assert cfg.effective_policy == "round-robin"
    assert cfg.uses_feedback is False


def test_configmap_data_section_alone_is_accepted(tmp_path):
    data = CONFIGMAP.split("\ndata:\n", 1)[1]
    cfg = load(tmp_path, "data:\n" + data)
    assert cfg.concurrent_request == 8
    bare = "\n".join(line.strip() for line in data.splitlines())
    assert load(tmp_path, bare).concurrent_request == 8


def test_seed_switches_change_what_is_in_force(tmp_path):
    cfg = load(tmp_path, 'katyusha-enable-junbanmachi: "false"\n')
    assert cfg.l1_limit is None
    assert cfg.effective_policy == "jsq-piggyback"
    off = load(tmp_path, 'ikukantai-enable-katyusha: "false"\npolicy: jsq-piggyback\n')
    assert off.l1_limit is None
    assert off.effective_policy == "round-robin"
    assert off.uses_feedback is False


def test_precedence_yaml_then_env_then_flags(tmp_path):
    text = "policy: p2c\nretries: 1\nrequest-timeout: 5\n"
    assert load(tmp_path, text).policy == "p2c"
    env = {"KATYUSHA_POLICY": "random", "KATYUSHA_RETRIES": "3"}
    cfg = load(tmp_path, text, env=env)
    assert (cfg.policy, cfg.retries, cfg.request_timeout) == ("random", 3, 5.0)
    cfg = load(tmp_path, text, env=env, argv=["--policy", "round-robin", "--set", "request-timeout=250ms"])
    assert (cfg.policy, cfg.retries, cfg.request_timeout) == ("round-robin", 3, 0.25)


def test_seed_keys_read_from_their_own_env_names(tmp_path):
    cfg = load(tmp_path, env={"KATYUSHA_JUNBANMACHI_CONCURRENT_REQUEST": "3", "IKUKANTAI_ENABLE_KATYUSHA": "false"})
    assert cfg.concurrent_request == 3
    assert cfg.enable_katyusha is False


def test_pods_from_flags_strings_and_mappings(tmp_path):
    cfg = load(
        tmp_path,
        argv=["--pod", "http://127.0.0.1:9101", "--pod", "http://127.0.0.1:9103,name=pod-1,node=node-1,admin=http://127.0.0.1:9102"],
    )
    assert cfg.pods[0] == config.PodSpec("127.0.0.1:9101", "http://127.0.0.1:9101")
    assert cfg.pods[1] == config.PodSpec("pod-1", "http://127.0.0.1:9103", "node-1", "http://127.0.0.1:9102")
    yaml_pods = "pods:\n  - {name: a, url: 'http://127.0.0.1:1'}\n  - http://127.0.0.1:2,name=b\n"
    assert [p.name for p in load(tmp_path, yaml_pods).pods] == ["a", "b"]
    env = {"KATYUSHA_PODS": "http://127.0.0.1:1,name=a; http://127.0.0.1:2,name=b"}
    assert [p.name for p in load(tmp_path, env=env).pods] == ["a", "b"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("katyusha-enable-fukabunsan: maybe\n", "katyusha-enable-fukabunsan"),
        ('katyusha-threads: "0"\n', "katyusha-threads"),
        ('katyusha-junbanmachi-concurrent-request: "8.5"\n', "katyusha-junbanmachi-concurrent-request"),
        ('katyusha-junbanmachi-concurrent-request: "-1"\n', "katyusha-junbanmachi-concurrent-request"),
        ("katyusha-threads: true\n", "katyusha-threads"),
        ("policy: fastest\n", "policy"),
        ("request-timeout: -3\n", "request-timeout"),
        ("demand-url: ftp://x\n", "demand-url"),
        ("pods: [http://127.0.0.1:1, http://127.0.0.1:1]\n", "pods"),
        ("pods: ['http://127.0.0.1:1,weight=3']\n", "pods"),
        ("katyusha-enable-junbanmachii: 'true'\n", "katyusha-enable-junbanmachii"),
        ("kind: Deployment\n", "kind"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.key == key or str(info.value).startswith(key)
    assert key in str(info.value)


def test_unknown_environment_setting_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="KATYUSHA_POLICYY"):
        load(tmp_path, env={"KATYUSHA_POLICYY": "p2c"})


def test_to_json_round_trips_through_validate(tmp_path):
    cfg = load(tmp_path, CONFIGMAP, argv=["--pod", "http://127.0.0.1:1,name=a"])
    view = cfg.to_json()
    view.pop("effective")
    assert config.validate(view) == cfg


def run_serve(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "katyusha.cli", "serve", "--port", "0", "--admin-port", "0", *argv],
        capture_output=True, text=True, timeout=30, env=env,
    )


def test_bad_key_fails_at_start_with_its_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('katyusha-enable-junbanmachi: "ture"\n')
    done = run_serve("--config", str(path))
    assert done.returncode != 0
    assert "katyusha-enable-junbanmachi" in done.stderr
    done = run_serve("--set", "no-such-key=1")
    assert done.returncode != 0
    assert "no-such-key" in done.stderr


def test_share_pods_is_a_setting_globally_and_per_service_with_errors_naming_it():
    c = config.validate({"share-pods": False, "services": [
        {"name": "a", "pods": []}, {"name": "b", "path-prefix": "/b", "pods": [], "share-pods": True}]})
    assert [c.service_settings(spec).share_pods for spec in c.service_specs] == [False, True]
    defaults = config.validate({})
    assert defaults.service_settings(defaults.service_specs[0]).share_pods is True
    for raw, key in (({"share-pods": "sometimes"}, "share-pods"),
                     ({"services": [{"name": "a", "share-pods": 3}]}, "services[0].share-pods")):
        with pytest.raises(ConfigError) as caught:
            config.validate(raw)
        assert caught.value.key == key
