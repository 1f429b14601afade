"""Profiles: one YAML per run size (smoke, default, paper) holding every notebook parameter.

A profile's top-level keys are exactly the notebooks' parameters (papermill injects them with
``-f notebooks/profiles/<name>.yaml``). Sections (``data``, ``reid``, ...) are plain dicts that
the library validates where it consumes them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import yaml

# Every top-level key a profile may hold, i.e. every notebook parameter.
TOP_LEVEL_KEYS: tuple[str, ...] = (
    "profile",      # name of the profile (runs go to <run_root>/<profile>/)
    "seed",         # the one integer every random choice derives from
    "run_root",     # where runs live (relative paths are relative to the project root)
    "figures_dir",  # where figures and tables go (null: <run_root>/<profile>/figures)
    "data_root",    # root of real image files (file-list datasets); null for PhantomCXR
    "data",         # dataset and split (trichotomy_lib.data.build)
    "reid",         # re-identification verifiers (defender, auditor)
    "classifier",   # reference classifier
    "encoder",      # pseudo-conditioning encoder
    "diffusion",    # diffusion models and sampling
    "generate",     # filtered generation (releases)
    "privacy",      # audit and singling-out attack
    "utility",      # train-on-synthetic / test-on-real, fidelity, diversity
    "sweep",        # guidance sweep
    "checks",       # thresholds the notebooks assert (trichotomy_lib.checks)
)
BUILTIN_PROFILES = ("smoke", "default", "paper")


class ConfigError(ValueError):
    """A profile or parameter is malformed; the message names the file and field."""


def project_root() -> Path:
    """The checkout holding ``notebooks/profiles`` (env ``TRICHOTOMY_ROOT`` wins).

    Searched upward from the working directory (notebooks run in ``notebooks/``), then
    beside the package (editable install).
    """
    if os.environ.get("TRICHOTOMY_ROOT"):
        return Path(os.environ["TRICHOTOMY_ROOT"]).resolve()
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for candidate in (start, *start.parents):
            if (candidate / "notebooks" / "profiles").is_dir():
                return candidate
    return Path.cwd().resolve()


def profile_path(profile: str | os.PathLike) -> Path:
    """A built-in profile name or a path to a YAML file."""
    text = os.fspath(profile)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text).resolve()
    return project_root() / "notebooks" / "profiles" / f"{text}.yaml"


def load_profile(profile: str | os.PathLike) -> dict:
    """Read and check a profile YAML: a mapping whose keys are all in ``TOP_LEVEL_KEYS``."""
    path = profile_path(profile)
    if not path.exists():
        known = ", ".join(BUILTIN_PROFILES)
        raise ConfigError(f"{path}: profile not found (built-in profiles: {known}, or give a path to a YAML file)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of parameters, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown parameter(s) {unknown}; known: {list(TOP_LEVEL_KEYS)}")
    cfg.setdefault("profile", path.stem)
    return cfg


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``; nested dicts merge key by key, other values replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def nested(dotted: str, value) -> dict:
    """``"diffusion.train.steps", 6000`` → ``{"diffusion": {"train": {"steps": 6000}}}``."""
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def parse_setting(text: str) -> tuple[str, object]:
    """``"diffusion.train.p_mean=-0.8"`` → ``("diffusion.train.p_mean", -0.8)``, the value read as YAML.

    Raises ``ConfigError`` naming the text unless it reads ``SECTION.KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key or "." not in key or "" in key.split("."):
        raise ConfigError(f"expected SECTION.KEY=VALUE (e.g. diffusion.train.p_mean=-0.8), got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"{text!r}: the value is not YAML ({e})") from None


def with_settings(cfg: dict, *settings: tuple[str, object]) -> dict:
    """``cfg`` with each ``(dotted key, value)`` of ``settings`` set (a copy; nested dicts merge)."""
    out = cfg
    for key, value in settings:
        out = deep_merge(out, nested(key, value))
    return out if settings else copy.deepcopy(cfg)


def resolve(profile: str | os.PathLike = "smoke", overrides: dict | None = None) -> dict:
    """The profile's parameters with every non-None override on top (dicts merge key by key).

    If ``profile`` names no file but the overrides are complete (papermill injected a whole
    custom profile), the overrides alone are used.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}; known: {list(TOP_LEVEL_KEYS)}")
    try:
        base = load_profile(profile)
    except ConfigError:
        if not set(TOP_LEVEL_KEYS) - {"figures_dir", "data_root"} <= set(overrides):
            raise
        base = {}
    cfg = deep_merge(base, overrides)
    cfg["profile"] = overrides.get("profile", base.get("profile", str(profile)))
    missing = [k for k in ("seed", "run_root", "data") if k not in cfg]
    if missing:
        raise ConfigError(f"profile {profile!r}: missing required parameter(s) {missing}")
    return cfg


def from_notebook(namespace: dict) -> dict:
    """The config of a notebook: its ``profile`` parameter plus every other parameter it set.

    Call as ``cfg = config.from_notebook(globals())`` right after the parameters cell.
    """
    profile = namespace.get("profile") or "smoke"
    return resolve(profile, {k: namespace.get(k) for k in TOP_LEVEL_KEYS if k != "profile"} | {"profile": profile})


def run_dir(cfg: dict) -> Path:
    """``<run_root>/<profile>``, with a relative run_root taken from the project root."""
    root = Path(cfg["run_root"])
    if not root.is_absolute():
        root = project_root() / root
    return root / str(cfg["profile"])


def figures_dir(cfg: dict) -> Path:
    """Where figures and tables go: ``figures_dir`` (relative to the project root) or the run's."""
    if cfg.get("figures_dir"):
        path = Path(cfg["figures_dir"])
        return path if path.is_absolute() else project_root() / path
    return run_dir(cfg) / "figures"


def section(cfg: dict, name: str, defaults: dict) -> dict:
    """``cfg[name]`` over ``defaults``, refusing keys the defaults do not know (typos)."""
    given = cfg.get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"parameter '{name}' must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key(s) in '{name}': {[f'{name}.{k}' for k in unknown]}; known: {sorted(defaults)}")
    return deep_merge(defaults, given)


# ------------------------------------------------------------------------------ validation
# Section name → fn(whole config) → the section with every default filled in and every value
# checked. Registered by the module that owns the section (``register_section``); a section
# nobody registered is passed through unchanged.
_SECTION_VALIDATORS: dict = {}


def register_section(name: str):
    """Register ``fn(cfg) -> dict`` as the validator of top-level section ``name``.

    A validator must be idempotent: ``fn({name: fn(cfg)})`` equals ``fn(cfg)``, because a
    resolved config is itself a valid config (notebooks hand it on).
    """

    def register(fn):
        _SECTION_VALIDATORS[name] = fn
        return fn

    return register


def validate(cfg: dict) -> dict:
    """The whole config, every registered section checked and completed with its defaults.

    Called once when a ``Pipeline`` is built, so a bad value fails before any stage runs, with
    a ``ConfigError`` naming the field; stages then read the resolved values (through a
    ``ConfigView``) and never rebuild a section from part of it.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"a config must be a mapping of parameters, got {type(cfg).__name__}")
    resolved = copy.deepcopy(cfg)
    for name, fn in _SECTION_VALIDATORS.items():
        try:
            resolved[name] = fn(cfg)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:  # a section validator's own error: name the section
            text = str(err)
            raise ConfigError(text if text.startswith(f"{name}.") else f"{name}: {text}") from None
    return resolved


class UndeclaredConfigKey(ConfigError):
    """A stage read a config key it did not declare (its cache key would not cover it)."""


class ConfigView(Mapping):
    """Read-only access to the keys a stage declared, and nothing else.

    ``view["generate.filter.k"]`` or ``view["generate"]["filter"]["k"]``: a key is readable
    when it is declared, lies under a declared key, or lies on the path to one (then it reads
    as a narrower view). Anything else raises ``UndeclaredConfigKey`` naming the stage and
    the key. A declared key missing from the config reads as None. Values are deep copies.
    """

    def __init__(self, data: dict, declared, owner: str, prefix: str = ""):
        self._data, self._declared, self._owner, self._prefix = data, tuple(declared), owner, prefix

    def _status(self, path: str) -> str:
        if any(path == d or path.startswith(d + ".") for d in self._declared):
            return "leaf"
        if any(d.startswith(path + ".") for d in self._declared):
            return "branch"
        return "hidden"

    def __getitem__(self, key: str):
        parts = str(key).split(".")
        data, prefix = self._data, self._prefix
        for i, part in enumerate(parts):
            path = f"{prefix}{part}"
            status = self._status(path)
            if status == "hidden":
                raise UndeclaredConfigKey(f"stage {self._owner!r} read config key {path!r}, which it did not declare "
                                          f"(declared: {list(self._declared)}); add it to the stage's keys")
            data = data.get(part) if isinstance(data, dict) else None
            if status == "leaf":  # everything below a declared key is readable: plain values from here
                for rest in parts[i + 1:]:
                    data = data.get(rest) if isinstance(data, dict) else None
                return copy.deepcopy(data)
            prefix = path + "."
        return ConfigView(data if isinstance(data, dict) else {}, self._declared, self._owner, prefix)

    def __iter__(self):
        for key in self._data:
            if self._status(f"{self._prefix}{key}") != "hidden":
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"ConfigView({self._owner!r}, {self._prefix or '<root>'}: {sorted(self)})"

    def to_dict(self) -> dict:
        """The readable part as a plain nested dict."""
        return {k: (v.to_dict() if isinstance(v, ConfigView) else v) for k, v in ((k, self[k]) for k in self)}

