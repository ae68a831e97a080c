"""The configurations ``diffbir bench`` compares, parsed from ``--configs`` (torch-free).

A configuration is written ``MODEL[:KEY=VALUE[/VALUE...]]...``:

* ``MODEL`` is a DiffBIR release (``v1``, ``v2``, ``v2.1``; ``diffbir`` is ``v2.1``)
  or ``hypir``, the one-step restorer; ``v2/v2.1`` names several.
* ``KEY`` is one of :data:`KEYS` (``sampler``, ``steps``, ``cfg``, ``guidance``,
  ``strength``), the restore option of that meaning (``guidance`` is
  ``--guidance-scale``, ``cfg`` ``--cfg-scale``, ``strength`` ``--strength``).
* Values separated by ``/`` make a grid: ``v2.1:steps=10/20:guidance=0/0.5`` is
  four configurations (every combination, the last key varying fastest).

``--configs`` takes several, comma-separated; ``--config`` may be repeated. Each
expanded configuration has a name (``v2.1_steps10_guidance0.5``), the folder its
results are kept in; a name given twice is run once. Whether a release takes an
option (``guidance`` with ``hypir`` does not) is checked when the configuration is
resolved (:func:`diffbir.bench.run.resolve_configs`), by the restore command's own
validation.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from diffbir.config.presets import HYPIR, MODELS, VERSIONS, release_for
from diffbir.errors import ConfigError, printable

#: Keys of a configuration: (RestoreOptions field, type), in the order names list them.
KEYS: dict[str, tuple[str, type]] = {
    "sampler": ("sampler", str),
    "steps": ("steps", int),
    "cfg": ("cfg_scale", float),
    "guidance": ("guidance_scale", float),
    "strength": ("control_strength", float),
}
#: What may stand first: a release, or a model family (its default release).
MODEL_NAMES = (*VERSIONS, *MODELS)
#: Characters a configuration's name (a folder) may hold.
_SAFE = re.compile(r"[A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: its release and the options it sets, in :data:`KEYS` order."""

    text: str  # the specification it came from, for messages
    version: str  # the release (v1, v2, v2.1, hypir)
    values: tuple[tuple[str, object], ...] = ()  # (key, value)

    @property
    def name(self) -> str:
        """The configuration's folder name: the release, then ``KEYvalue`` per key."""
        parts = [self.version] + [f"{key}{_shown(value)}" for key, value in self.values]
        return "_".join(parts)

    @property
    def model(self) -> str:
        return HYPIR if self.version == HYPIR else "diffbir"

    def get(self, key: str, default=None):
        """The value this configuration gives ``key``, else ``default``."""
        return dict(self.values).get(key, default)

    def options(self) -> dict[str, object]:
        """The RestoreOptions fields this configuration sets."""
        return {KEYS[key][0]: value for key, value in self.values}

    def label(self) -> str:
        """``v2.1 steps=10 guidance=0.5``: how tables and plots name it."""
        return " ".join([self.version] + [f"{k}={_shown(v)}" for k, v in self.values])


def _shown(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _release(token: str, spec: str) -> str:
    name = token.strip().lower()
    if name not in MODEL_NAMES:
        raise ConfigError(
            f"config {printable(spec)!r}: unknown release or model {printable(name)!r}; "
            f"choose one of {', '.join(MODEL_NAMES)}"
        )
    if name in MODELS:
        return release_for(name, None)
    return name


def _value(key: str, raw: str, spec: str):
    kind = KEYS[key][1]
    text = raw.strip()
    try:
        if kind is str:
            if not text or not _SAFE.fullmatch(text):
                raise ValueError
            return text.lower()
        value = kind(text)
    except ValueError:
        what = {int: "a whole number", float: "a number", str: "a name"}[kind]
        raise ConfigError(
            f"config {printable(spec)!r}: {key}={printable(raw)!r} is not {what}"
        ) from None
    if kind is float and value != value:  # NaN
        raise ConfigError(f"config {printable(spec)!r}: {key}={printable(raw)!r} is not a number")
    return value


def parse_config(spec: str) -> list[BenchConfig]:
    """Every configuration of one specification (a grid expands), in order.

    Raises :class:`ConfigError` in one line for an unknown release, key or value."""
    parts = spec.strip().split(":")
    if not parts[0].strip():
        raise ConfigError(
            f"config {printable(spec)!r}: start with a release or model "
            f"({', '.join(MODEL_NAMES)}), e.g. v2.1:steps=10"
        )
    releases = [_release(token, spec) for token in parts[0].split("/")]
    given: dict[str, list] = {}
    for part in parts[1:]:
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            raise ConfigError(
                f"config {printable(spec)!r}: {printable(part)!r} is not KEY=VALUE with a KEY "
                f"of {', '.join(KEYS)}"
            )
        if key in given:
            raise ConfigError(f"config {printable(spec)!r}: {key} is given twice")
        given[key] = [_value(key, v, spec) for v in raw.split("/")]
    keys = [k for k in KEYS if k in given]
    configs = []
    for version in releases:
        for combo in itertools.product(*(given[k] for k in keys)):
            configs.append(BenchConfig(spec.strip(), version, tuple(zip(keys, combo))))
    return configs


def parse_configs(specs: Iterable[str]) -> list[BenchConfig]:
    """The configurations of ``--configs``/``--config`` values (each may list several,
    comma-separated), in order, each name once."""
    configs: list[BenchConfig] = []
    seen: set[str] = set()
    for text in specs:
        for spec in text.split(","):
            if not spec.strip():
                raise ConfigError(f"--configs {printable(text)!r}: an empty configuration")
            for config in parse_config(spec):
                if config.name not in seen:
                    seen.add(config.name)
                    configs.append(config)
    if not configs:
        raise ConfigError("no configuration: pass --configs, e.g. --configs v2.1,hypir")
    return configs
