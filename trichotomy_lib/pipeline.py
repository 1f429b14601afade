"""Cached stages: each a pure function of (its config keys, upstream artifacts) → a directory.

A stage's artifacts live in ``runs/<profile>/<stage>-<key>/`` where ``key`` hashes the stage's
name and version, the values of the config keys it reads, and the keys of its upstream stages.
Changing a parameter therefore invalidates exactly the stages that read it and everything
downstream of them; nothing else is recomputed. ``config.json`` beside the artifacts records
what produced them.

A stage computes into ``.<stage>-<key>.partial/`` and the directory is renamed into place only
when the stage returns, so a finished directory is always complete. A stage that is interrupted
leaves its ``.partial`` directory behind: long stages keep checkpoints there and resume.

Stages register themselves with ``@stage(...)`` in the modules of ``trichotomy_lib.stages``, and
the config sections they own with ``config.register_section``; this module knows none of them.
Whoever opens a pipeline on the project's stages imports ``trichotomy_lib.stages`` first
(``notebook.setup`` does).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import config as config_mod
from .io import atomic_write_json, to_jsonable

_MISSING = object()


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[["StageContext"], None]
    keys: tuple[str, ...]  # dotted config paths the stage reads, e.g. "data" or "reid.defender"
    deps: tuple[str, ...] = ()
    version: int = 1  # bump when the stage's code changes what it writes
    doc: str = ""


@dataclass
class StageContext:
    """What a stage function receives.

    ``config`` is a ``ConfigView`` of the resolved config that raises on any key the stage did
    not declare, and ``pipeline`` answers ``get`` only for the stage's upstream stages, so
    everything a stage can read is covered by its cache key.
    """

    name: str
    config: config_mod.ConfigView  # the declared keys of the resolved config, nothing else
    params: dict  # {dotted key: resolved value} for the declared keys
    inputs: dict[str, Path]  # upstream stage name → its artifact directory
    out: Path  # the directory to write into (persistent across interruptions)
    pipeline: "UpstreamPipeline" = field(repr=False)


STAGES: dict[str, Stage] = {}


def stage(name: str, keys: tuple[str, ...], deps: tuple[str, ...] = (), version: int = 1):
    """Register ``fn(ctx: StageContext) -> None`` as a pipeline stage."""

    def register(fn):
        if name in STAGES and STAGES[name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"stage {name!r} registered twice ({STAGES[name].fn.__module__}, {fn.__module__})")
        STAGES[name] = Stage(name, fn, tuple(keys), tuple(deps), version, (fn.__doc__ or "").strip())
        return fn

    return register


def _registry() -> dict[str, Stage]:
    """The registered stages (``import trichotomy_lib.stages`` registers the project's)."""
    return STAGES


def lookup(cfg: dict, dotted: str):
    """``cfg["a"]["b"]`` for ``"a.b"``; a missing key reads as None (a stage's default applies)."""
    value = cfg
    for part in dotted.split("."):
        if not isinstance(value, dict):
            raise config_mod.ConfigError(f"config key '{dotted}': '{part}' is inside a non-mapping")
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


@contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` for the duration of the block (POSIX flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Pipeline:
    """Resolves stages for one config. ``Pipeline(cfg).get("reid_defender")`` → artifact dir."""

    def __init__(self, cfg: dict, run_dir: str | os.PathLike | None = None, verbose: bool = True):
        self.cfg = config_mod.validate(cfg)  # the whole config, checked once, defaults filled in
        self.run_dir = Path(run_dir) if run_dir is not None else config_mod.run_dir(cfg)
        self.verbose = verbose
        self._keys: dict[str, str] = {}

    # -- identity -------------------------------------------------------------------------
    def stage(self, name: str) -> Stage:
        registry = _registry()
        if name not in registry:
            raise KeyError(f"unknown stage {name!r}; known stages: {sorted(registry)} "
                           "(import trichotomy_lib.stages to register the project's stages)")
        return registry[name]

    def params(self, name: str) -> dict:
        return {key: lookup(self.cfg, key) for key in self.stage(name).keys}

    def key(self, name: str) -> str:
        """Hash of the stage's identity, its config values and its upstream stages' keys."""
        if name not in self._keys:
            st = self.stage(name)
            ident = {
                "stage": name,
                "version": st.version,
                "params": to_jsonable(self.params(name)),
                "deps": {dep: self.key(dep) for dep in st.deps},
            }
            blob = json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()
            self._keys[name] = hashlib.sha256(blob).hexdigest()[:12]
        return self._keys[name]

    def path(self, name: str) -> Path:
        return self.run_dir / f"{name}-{self.key(name)}"

    def is_cached(self, name: str) -> bool:
        return (self.path(name) / "config.json").exists()

    # -- computing ------------------------------------------------------------------------
    def get(self, name: str) -> Path:
        """The stage's artifact directory, computing it (and its upstream stages) if needed.

        Two processes asking for the same stage (a notebook and ``trichotomy reproduce``, say)
        take turns on a lock file; the second one finds the first one's result.
        """
        final = self.path(name)
        if (final / "config.json").exists():
            return final
        st = self.stage(name)
        inputs = {dep: self.get(dep) for dep in st.deps}
        with _locked(self.run_dir / f".{final.name}.lock"):
            if (final / "config.json").exists():
                return final
            partial = self.run_dir / f".{final.name}.partial"
            partial.mkdir(parents=True, exist_ok=True)
            if self.verbose:
                print(f"[pipeline] computing stage {name!r} → {final}", flush=True)
            start = time.perf_counter()
            view = config_mod.ConfigView(self.cfg, st.keys, name)
            ctx = StageContext(name, view, self.params(name), inputs, partial, UpstreamPipeline(self, name, view))
            st.fn(ctx)
            atomic_write_json(
                partial / "config.json",
                {
                    "stage": name,
                    "version": st.version,
                    "key": self.key(name),
                    "params": self.params(name),
                    "deps": {dep: str(path) for dep, path in inputs.items()},
                    "seconds": round(time.perf_counter() - start, 3),
                },
            )
            if final.exists():  # left over from a run that died between rename and config
                shutil.rmtree(final)
            os.replace(partial, final)
        return final

    def upstream(self, name: str) -> set[str]:
        """Every stage ``name`` depends on, directly or through another stage."""
        seen, todo = set(), list(self.stage(name).deps)
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.stage(dep).deps)
        return seen

    def seconds(self, name: str) -> float | None:
        """Wall time the cached stage took to compute (None if not cached)."""
        path = self.path(name) / "config.json"
        return json.loads(path.read_text())["seconds"] if path.exists() else None

    def clear(self, name: str) -> None:
        """Remove the stage's cached artifacts (and any interrupted partial run)."""
        for path in (self.path(name), self.run_dir / f".{self.path(name).name}.partial"):
            if path.exists():
                shutil.rmtree(path)


class UpstreamPipeline:
    """The pipeline as a running stage sees it: its config view and its upstream stages only.

    Loaders written for notebooks (``load_splits(pipe)``, ...) work unchanged inside a stage;
    asking for a stage that is not upstream, or reading an undeclared key, raises.
    """

    def __init__(self, pipe: Pipeline, name: str, view: config_mod.ConfigView):
        self._pipe, self._name, self.cfg = pipe, name, view
        self._allowed = pipe.upstream(name)
        self.run_dir = pipe.run_dir

    def get(self, name: str) -> Path:
        if name not in self._allowed:
            raise KeyError(f"stage {self._name!r} asked for stage {name!r}, which is not upstream of it "
                           f"(deps: {sorted(self._pipe.stage(self._name).deps)}); add it to the stage's deps")
        return self._pipe.get(name)
