"""KPAConfig: Knative's config-autoscaler keys and defaults, per-service annotations, errors naming the key."""

import pytest

from katyusha.core.autoscaler_config import KPAConfig, parse_duration
from katyusha.core.errors import ConfigError


def test_defaults_are_knatives():
    cfg = KPAConfig.from_mapping({})
    assert cfg.container_concurrency_target_default == 100
    assert cfg.target_utilization == pytest.approx(0.70)
    assert cfg.requests_per_second_target_default == 200
    assert cfg.target_burst_capacity == 211
    assert cfg.stable_window == 60
    assert cfg.panic_window_percentage == 10
    assert cfg.panic_threshold_percentage == 200
    assert cfg.max_scale_up_rate == 1000
    assert cfg.max_scale_down_rate == 2
    assert cfg.enable_scale_to_zero is True
    assert cfg.scale_to_zero_grace_period == 30
    assert (cfg.min_scale, cfg.max_scale, cfg.initial_scale, cfg.activation_scale) == (0, 0, 1, 1)
    assert cfg.metric == "concurrency"
    assert cfg.tick_interval == 2
    # Derived: 100 x 70% = 70 per pod; panic window 60 s x 10% = 6 s; threshold 200% = 2.0.
    assert cfg.target_value == pytest.approx(70)
    assert cfg.panic_window == pytest.approx(6)
    assert cfg.panic_threshold == pytest.approx(2.0)


def test_configmap_data_strings_are_read_unchanged():
    data = {
        "_example": "# the block Knative ships in its ConfigMaps is documentation\n",
        "container-concurrency-target-default": "50",
        "container-concurrency-target-percentage": "80",
        "requests-per-second-target-default": "150",
        "target-burst-capacity": "-1",
        "stable-window": "1m30s",
        "panic-window-percentage": "20.0",
        "panic-threshold-percentage": "150",
        "max-scale-up-rate": "10",
        "max-scale-down-rate": "4",
        "enable-scale-to-zero": "false",
        "scale-to-zero-grace-period": "45s",
        "scale-to-zero-pod-retention-period": "1m",
        "scale-down-delay": "15s",
        "min-scale": "1",
        "max-scale": "20",
        "max-scale-limit": "100",
        "initial-scale": "2",
        "allow-zero-initial-scale": "true",
        "activation-scale": "3",
        "pod-autoscaler-class": "kpa.autoscaling.knative.dev",
        "activator-capacity": "100",
        "metric": "rps",
        "tick-interval": "500ms",
    }
    cfg = KPAConfig.from_mapping(data)
    assert cfg.container_concurrency_target_default == 50
    assert cfg.target_utilization == pytest.approx(0.8)
    assert cfg.requests_per_second_target_default == 150
    assert cfg.target_burst_capacity == -1
    assert cfg.stable_window == 90
    assert cfg.panic_window == pytest.approx(18)  # 90 s x 20%
    assert cfg.panic_threshold == pytest.approx(1.5)
    assert (cfg.max_scale_up_rate, cfg.max_scale_down_rate) == (10, 4)
    assert cfg.enable_scale_to_zero is False
    assert cfg.scale_to_zero_grace_period == 45
    assert cfg.scale_to_zero_pod_retention_period == 60
    assert cfg.scale_down_delay == 15
    assert (cfg.min_scale, cfg.max_scale, cfg.initial_scale, cfg.activation_scale) == (1, 20, 2, 3)
    assert cfg.metric == "rps"
    assert cfg.tick_interval == pytest.approx(0.5)
    # rps target: 150 x 80% = 120 requests per second per pod.
    assert cfg.target_value == pytest.approx(120)


def test_yaml_native_values_and_legacy_fraction():
    cfg = KPAConfig.from_mapping({"stable-window": 30, "enable-scale-to-zero": False,
                                  "container-concurrency-target-percentage": 0.5, "max-scale": 4})
    assert cfg.stable_window == 30
    assert cfg.enable_scale_to_zero is False
    assert cfg.target_utilization == pytest.approx(0.5)  # values in (0, 1] are fractions, as in Knative
    assert cfg.max_scale == 4


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("1m", 60), ("1m30s", 90), ("1.5h", 5400),
                                           ("250ms", 0.25), ("7", 7)])
def test_go_durations(text, seconds):
    assert parse_duration("k", text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "key, value",
    [
        ("no-such-key", "1"),
        ("stable-window", "5s"),  # below Knative's 6 s minimum
        ("stable-window", "2h"),  # above the 1 h maximum
        ("stable-window", "6.5s"),  # not whole seconds
        ("stable-window", "sixty"),
        ("scale-to-zero-grace-period", "0s"),
        ("container-concurrency-target-percentage", "0"),
        ("container-concurrency-target-percentage", "150"),
        ("panic-threshold-percentage", "50"),
        ("panic-window-percentage", "0"),
        ("max-scale-up-rate", "1"),
        ("max-scale-down-rate", "0.5"),
        ("target-burst-capacity", "-2"),
        ("enable-scale-to-zero", "maybe"),
        ("min-scale", "-1"),
        ("min-scale", "1.5"),
        ("max-scale", "-3"),
        ("initial-scale", "0"),  # needs allow-zero-initial-scale
        ("activation-scale", "0"),
        ("metric", "cpu"),
        ("pod-autoscaler-class", "hpa.autoscaling.knative.dev"),
        ("requests-per-second-target-default", "0"),
        ("max-scale-down-rate", True),
    ],
)
def test_bad_key_or_value_names_the_key(key, value):
    with pytest.raises(ConfigError) as info:
        KPAConfig.from_mapping({key: value})
    assert info.value.key == key
    assert key in str(info.value)
    assert info.value.status_hint == 400


def test_cross_key_checks_name_a_key():
    with pytest.raises(ConfigError, match="min-scale"):
        KPAConfig.from_mapping({"min-scale": "5", "max-scale": "3"})
    with pytest.raises(ConfigError, match="activation-scale"):
        KPAConfig.from_mapping({"activation-scale": "5", "max-scale": "3"})
    with pytest.raises(ConfigError, match="max-scale"):
        KPAConfig.from_mapping({"max-scale-limit": "10", "max-scale": "11"})
    assert KPAConfig.from_mapping({"initial-scale": "0", "allow-zero-initial-scale": "true"}).initial_scale == 0


def test_annotations_override_per_service():
    base = KPAConfig.from_mapping({"max-scale": "50"})
    svc = base.with_annotations({
        "autoscaling.knative.dev/target": "10",
        "autoscaling.knative.dev/target-utilization-percentage": "50",
        "autoscaling.knative.dev/window": "20s",
        "autoscaling.knative.dev/panic-window-percentage": "25",
        "autoscaling.knative.dev/panic-threshold-percentage": "300",
        "autoscaling.knative.dev/target-burst-capacity": "0",
        "autoscaling.knative.dev/minScale": "2",  # Knative's legacy camelCase spelling
        "autoscaling.knative.dev/initial-scale": "3",
        "autoscaling.knative.dev/activation-scale": "2",
        "autoscaling.knative.dev/scale-to-zero-pod-retention-period": "90s",
        "max-scale": "8",  # bare annotation name
        "sidecar.istio.io/inject": "false",  # another system's annotation: not ours to judge
    })
    # 10 x 50% = 5 per pod; panic window 20 s x 25% = 5 s.
    assert svc.target_value == pytest.approx(5)
    assert svc.stable_window == 20
    assert svc.panic_window == pytest.approx(5)
    assert svc.panic_threshold == pytest.approx(3)
    assert (svc.min_scale, svc.max_scale, svc.initial_scale, svc.activation_scale) == (2, 8, 3, 2)
    assert svc.scale_to_zero_pod_retention_period == 90
    assert base.max_scale == 50 and base.target is None  # the shared config is untouched


def test_rps_annotation_target():
    svc = KPAConfig().with_annotations({"autoscaling.knative.dev/metric": "rps",
                                        "autoscaling.knative.dev/target": "20"})
    assert svc.metric == "rps"
    assert svc.target_value == pytest.approx(14)  # 20 rps x 70%


def test_container_concurrency_caps_the_target():
    # A hard limit of 10 per pod: the default soft target 100 becomes 10, then 70% of it is 7.
    assert KPAConfig(container_concurrency=10).target_value == pytest.approx(7)
    # An explicit target above the hard limit is capped too; one below it stands.
    assert KPAConfig(container_concurrency=10, target=50).total_target == 10
    assert KPAConfig(container_concurrency=10, target=4).total_target == 4


@pytest.mark.parametrize(
    "key, value",
    [
        ("autoscaling.knative.dev/no-such-thing", "1"),
        ("autoscaling.knative.dev/window", "2s"),
        ("autoscaling.knative.dev/target", "0"),
        ("autoscaling.knative.dev/metric", "memory"),
        ("autoscaling.knative.dev/min-scale", "many"),
        ("autoscaling.knative.dev/panic-threshold-percentage", "100"),
        ("autoscaling.knative.dev/max-scale", "-1"),
        ("autoscaling.knative.dev/class", "hpa.autoscaling.knative.dev"),
    ],
)
def test_bad_annotation_names_the_annotation(key, value):
    with pytest.raises(ConfigError) as info:
        KPAConfig().with_annotations({key: value})
    assert info.value.key == key


def test_config_is_frozen_and_validated_on_construction():
    cfg = KPAConfig()
    with pytest.raises(AttributeError):
        cfg.max_scale = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="stable-window"):
        KPAConfig(stable_window=1)


# -- the fleet file's services take the annotations -----------------------------------------


def test_fleet_file_service_annotations_set_that_services_autoscaler():
    from katyusha.fleet.spec import build_spec

    spec = build_spec({
        "autoscaler": {"stable-window": "60s", "tick-interval": "1s"},
        "services": [{"name": "web", "annotations": {
            "autoscaling.knative.dev/metric": "rps", "autoscaling.knative.dev/target": 200,
            "autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/max-scale": "10",
            "example.com/owner": "team-a"}}],  # other prefixes belong to other systems
    }, {})  # fmt: skip
    [(key, config)] = spec.scaling().items()
    assert key is None  # every pod of a local fleet joins katyusha's default service
    assert (config.metric, config.target, config.stable_window, config.max_scale) == ("rps", 200.0, 6.0, 10)
    assert config.tick_interval == 1.0  # the section's keys stay under the annotations
    # Without annotations a service takes the autoscaler section as it is.
    assert build_spec({"autoscaler": {"tick-interval": "1s"}}, {}).scaling() == {None: KPAConfig(tick_interval=1.0)}


@pytest.mark.parametrize(
    ("annotations", "key"),
    [
        ({"autoscaling.knative.dev/window": "2s"}, "services[0].annotations.autoscaling.knative.dev/window"),
        ({"autoscaling.knative.dev/metric": "memory"}, "services[0].annotations.autoscaling.knative.dev/metric"),
        ({"autoscaling.knative.dev/targt": "5"}, "services[0].annotations.autoscaling.knative.dev/targt"),
        ({"max-scale": "-1"}, "services[0].annotations.max-scale"),
        ("rps", "services[0].annotations"),
    ],
)
def test_bad_service_annotations_are_refused_naming_the_field_path(annotations, key):
    from katyusha.fleet.spec import build_spec

    with pytest.raises(ConfigError) as refused:
        build_spec({"services": [{"name": "web", "annotations": annotations}]}, {})
    assert refused.value.key == key, str(refused.value)


def test_annotations_go_on_the_first_of_services_that_share_one_autoscaler():
    from katyusha.fleet.spec import build_spec

    doc = {"services": [{"name": "web"}, {"name": "batch", "annotations": {"autoscaling.knative.dev/target": 5}}],
           "groups": [{"name": "w", "service": "web"}, {"name": "b", "service": "batch"}]}  # fmt: skip
    with pytest.raises(ConfigError, match="first service") as refused:
        build_spec(doc, {})
    assert refused.value.key == "services[1].annotations"
