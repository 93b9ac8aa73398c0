"""sim-backend settings from a YAML file, SIM_BACKEND_* environment variables and flags.

Precedence, low to high: defaults, YAML (``--config FILE``), environment,
flags. YAML keys are the flag names without dashes in front (``service-time``;
``service_time`` is accepted too). Environment variables are ``SIM_BACKEND_``
and the flag name in upper case with underscores (``SIM_BACKEND_SERVICE_TIME``).
Unknown keys and bad values raise ConfigError naming the key where the value
came from.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from katyusha.admintoken import check_exposure, resolve_token
from katyusha.config_values import read_yaml_mapping
from katyusha.core.distributions import Distribution, parse_service_time
from katyusha.core.errors import ConfigError
from katyusha.core.podstate import ACTIVE, PodCosts, PodState
from sim_backend.slowdown import SlowSchedule, parse_slow_schedule

ENV_PREFIX = "SIM_BACKEND_"


def _port(value: Any, key: str) -> int:
    port = _int(value, key)
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port {port} out of range 0-65535")
    return port


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    try:
        return int(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected an integer, got {value!r}") from None


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected a number, got {value!r}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(key, f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return number


def _positive(value: Any, key: str) -> float:
    number = _float(value, key)
    if number <= 0:
        raise ConfigError(key, f"must be above 0, got {value!r}")
    return number


def _non_negative(value: Any, key: str) -> float:
    number = _float(value, key)
    if number < 0:
        raise ConfigError(key, f"must be >= 0, got {value!r}")
    return number


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


def _text(value: Any, key: str) -> str:
    text = str(value).strip()
    if not text or isinstance(value, bool | dict | list):
        raise ConfigError(key, f"expected a non-empty string, got {value!r}")
    return text


def _state(value: Any, key: str) -> PodState:
    try:
        state = PodState(str(value).strip())
    except ValueError:
        known = ", ".join(s.value for s in PodState if s is not ACTIVE)
        raise ConfigError(key, f"unknown state {value!r} (one of {known})") from None
    if state is ACTIVE:
        raise ConfigError(key, "a pod cannot start active (active means requests are executing)")
    return state


def _optional_text(value: Any, key: str) -> str | None:
    text = str(value).strip()
    if isinstance(value, bool | dict | list):
        raise ConfigError(key, f"expected a string, got {value!r}")
    return text or None


def _service_time(value: Any, key: str) -> Distribution:
    return parse_service_time(str(value), key=key)


def _slow(value: Any, key: str) -> SlowSchedule | None:
    text = str(value).strip()
    if text.lower() in ("", "none", "off"):
        return None
    return parse_slow_schedule(text, key=key)


APPS = ("emulated", "sentiment")


def _app(value: Any, key: str) -> str:
    name = str(value).strip()
    if name not in APPS:
        raise ConfigError(key, f"unknown app {value!r} (one of {', '.join(APPS)})")
    return name


def _buffer(value: Any, key: str) -> int:
    size = _int(value, key)
    if size < 1:
        raise ConfigError(key, f"must be at least 1, got {value!r}")
    return size


@dataclass(frozen=True)
class Option:
    name: str  # flag name without dashes, also the YAML key
    parse: Callable[[Any, str], Any]
    default: Any
    help: str
    is_flag: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("port", _port, 9001, "data port (0: the kernel picks one)"),
    Option("admin-port", _port, 9002, "admin port (0: the kernel picks one)"),
    Option("host", _text, "127.0.0.1", "address to listen on"),
    Option("pod", _text, "pod-1", "pod name reported in responses and metrics"),
    Option("node", _text, "node-1", "node name reported in responses and metrics"),
    Option("app", _app, "emulated", "the application: emulated (service times) or sentiment (VADER)"),
    Option("state", _state, "warm", "initial state: null, cold, warmdisk or warm"),
    Option("service-time", _service_time, "const:100ms", "service-time distribution"),
    Option("speed", _positive, 1.0, "speed multiplier: service time is divided by it"),
    Option("image-size-mb", _non_negative, 200.0, "image size in MB (pull time = size / pull-mbps)"),
    Option("pull-mbps", _positive, 100.0, "image pull bandwidth in MB/s"),
    Option("start-s", _non_negative, 1.0, "container start time in seconds (warmdisk -> warm)"),
    Option("cpu-burn", _bool, False, "burn real CPU for the service time instead of sleeping", True),
    Option("seed", _int, None, "seed of the service-time random generator (default: random)"),
    Option("requests-buffer", _buffer, 1000, "how many recent requests GET /requests keeps"),
    Option("slow-schedule", _slow, None, "periodic slowdown, e.g. period=10s,duration=3s,factor=0.25"),
    Option("monitor-period", _positive, 2.0, "seconds between CPU/RAM samples"),
    Option("monitor-window", _positive, 120.0, "seconds of samples GET /monitor keeps"),
    Option("admin-token", _optional_text, None, "bearer token PUT /state and PUT /speed must carry "
           "(prefer --admin-token-file)"),
    Option("admin-token-file", _optional_text, None, "file holding the admin token"),
    Option("admin-allow-open", _bool, False, "serve the admin port on a non-loopback --host with no token",
           True),
)
_BY_NAME = {opt.name: opt for opt in OPTIONS}


@dataclass(frozen=True)
class Settings:
    port: int = 9001
    admin_port: int = 9002
    host: str = "127.0.0.1"
    pod: str = "pod-1"
    node: str = "node-1"
    app: str = "emulated"
    state: PodState = PodState.WARM
    service_time: Distribution = field(default_factory=lambda: parse_service_time("const:100ms"))
    speed: float = 1.0
    image_size_mb: float = 200.0
    pull_mbps: float = 100.0
    start_s: float = 1.0
    cpu_burn: bool = False
    seed: int | None = None
    requests_buffer: int = 1000
    slow_schedule: SlowSchedule | None = None
    monitor_period: float = 2.0
    monitor_window: float = 120.0
    admin_token: str | None = None
    admin_token_file: str | None = None
    admin_allow_open: bool = False
    config: str | None = None

    @property
    def costs(self) -> PodCosts:
        return PodCosts(self.image_size_mb, self.pull_mbps, self.start_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sim-backend",
        description="An emulated pod: lifecycle states, cold starts, service times, CPU/RAM profile.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (lowest precedence)")
    for opt in OPTIONS:
        default = "" if opt.default is None else f" (default: {opt.default})"
        if opt.is_flag:
            parser.add_argument(
                f"--{opt.name}", action="store_const", const=True, help=opt.help + default
            )
        else:
            parser.add_argument(f"--{opt.name}", metavar="VALUE", help=opt.help + default)
    return parser


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``argv`` (flags), ``env`` and the YAML file ``--config`` names.

    Raises ConfigError naming the flag, variable or YAML key that is unknown or bad;
    argparse itself exits with status 2 on unknown flags.
    """
    args = vars(build_parser().parse_args(argv))
    env = {} if env is None else env
    values: dict[str, Any] = {}
    config_path = args.pop("config", None) or env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        for raw_key, value in read_yaml_mapping(config_path, "--config").items():
            name = str(raw_key).replace("_", "-")
            opt = _BY_NAME.get(name)
            if opt is None:
                known = ", ".join(sorted(_BY_NAME))
                raise ConfigError(f"{raw_key} (in {config_path})", f"unknown key; known keys: {known}")
            if value is not None:
                values[opt.attr] = opt.parse(value, f"{raw_key} (in {config_path})")
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        opt = next((o for o in OPTIONS if o.env == var), None)
        if opt is None:
            raise ConfigError(var, "unknown sim-backend environment variable")
        values[opt.attr] = opt.parse(value, var)
    for attr, value in args.items():
        opt = _BY_NAME[attr.replace("_", "-")]
        values[attr] = opt.parse(value, f"--{opt.name}")
    token = resolve_token(values.get("admin_token"), values.get("admin_token_file"),
                          token_key="--admin-token", file_key="--admin-token-file")
    values["admin_token"] = token
    check_exposure(values.get("host", Settings.host), token, values.get("admin_allow_open", False),
                   host_key="--host", token_key="--admin-token", file_key="--admin-token-file",
                   allow_key="--admin-allow-open")
    return Settings(config=config_path, **values)
