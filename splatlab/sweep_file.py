"""The sweep file of ``splatlab sweep``: reading YAML or TOML, validating every key, expanding the grid.

See :mod:`splatlab.sweep` for the format. Every problem raises ``ValueError`` with the file and the key,
e.g. ``sweeps/x.yaml: grid.view_fraction[1]: a share of the training views in (0, 1], got 1.5``, which the
CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["EXTRA_SETTINGS", "Sweep", "eval_fields", "load_sweep", "parse_sweep", "setting_name"]

# Settings of a job beyond EvalConfig's fields: what they mean is in the module docstring.
EXTRA_SETTINGS: dict[str, Any] = {"view_fraction": 1.0, "look": "clean", "data_seed": 0}
TOP_KEYS = ("name", "data", "classes", "base", "grid", "runs", "device")


def eval_fields() -> dict[str, dataclasses.Field]:
    from splatlab.evaluate import EvalConfig

    return {f.name: f for f in dataclasses.fields(EvalConfig)}


@dataclass(frozen=True)
class Sweep:
    """A parsed, validated sweep file."""

    name: str  # title of the report
    data: Path | None  # a dataset folder, or None: generated LEGO-MAD (look, data_seed, size per setting)
    classes: tuple[str, ...]  # class names; () = every class of the dataset
    settings: tuple[dict[str, Any], ...]  # per setting, every knob (EvalConfig fields + EXTRA_SETTINGS)
    varying: tuple[str, ...]  # the knobs that differ between settings, in grid order
    runs: Path | None = None  # the run cache; None = splatlab.run.default_run_root()
    device: str | None = None  # "cpu", "cuda" (or "cuda:N"); None = the CPU
    source: str = ""  # the file it came from, for messages
    raw: dict = field(default_factory=dict, compare=False)  # the file's content as read


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sweep file not found")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    elif suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    else:
        raise ValueError(f"{path}: a sweep file is .yaml, .yml or .toml")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping (name, data, classes, base, grid)")
    return data


def _check_value(where: str, name: str, value: Any) -> Any:
    """``value`` of setting ``name`` checked against its type and allowed names; ``where`` prefixes errors."""
    def bad(what: str) -> ValueError:
        return ValueError(f"{where}: {what}, got {value!r}")

    fields = eval_fields()
    if name in EXTRA_SETTINGS:
        default = EXTRA_SETTINGS[name]
        kind = type(default).__name__
    elif name in fields:
        kind = str(fields[name].type)
    else:
        known = sorted([*fields, *EXTRA_SETTINGS])
        raise ValueError(f"{where}: unknown setting; choose from {', '.join(known)}")
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise bad("must not be empty")
    if kind.startswith("tuple"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad("expected a list of names")
        value = tuple(value)
    elif kind.startswith("bool"):
        if not isinstance(value, bool):
            raise bad("expected true or false")
    elif kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("expected an integer")
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("expected a number")
        value = float(value)
    elif kind.startswith("str"):
        if not isinstance(value, str):
            raise bad("expected a name")
    _check_name(where, name, value)
    return value


def _check_name(where: str, name: str, value: Any) -> None:
    """Allowed values of the settings that name something (presets, maps, looks) or have a range."""
    allowed: tuple | None = None
    if name == "train_preset":
        from splatlab.train import PRESETS as allowed
    elif name == "pose_preset":
        from splatlab.pose import PRESETS

        allowed = tuple(PRESETS)
    elif name == "method":
        from splatlab.anomaly import METHODS as allowed
    elif name == "compare_methods":
        from splatlab.anomaly import METHODS

        unknown = [v for v in value if v not in METHODS]
        if unknown:
            raise ValueError(f"{where}: unknown maps {unknown}; choose from {', '.join(METHODS)}")
    elif name == "calibration":
        allowed = ("pose", "gt_pose", "none")
    elif name == "look":
        from splatlab.data.make import LOOKS

        allowed = tuple(LOOKS)
    elif name == "view_fraction" and not 0.0 < value <= 1.0:
        raise ValueError(f"{where}: a share of the training views in (0, 1], got {value!r}")
    elif name in ("iterations", "max_queries", "size", "calib_every") and value is not None and value < 1:
        raise ValueError(f"{where}: must be positive, got {value!r}")
    if allowed is not None and value is not None and value not in allowed:
        raise ValueError(f"{where}: unknown {value!r}; choose from {', '.join(allowed)}")


def parse_sweep(raw: Mapping, source: str = "sweep") -> Sweep:
    """Validate a sweep file's content; a problem raises ``ValueError`` naming ``source`` and the key."""
    from splatlab.evaluate import EvalConfig

    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"{source}: {unknown[0]}: unknown key; a sweep file has {', '.join(TOP_KEYS)}")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise ValueError(f"{source}: name: expected a title, got {name!r}")
    data_raw = raw.get("data", {})
    data: Path | None = None
    generated: dict[str, Any] = {}
    if isinstance(data_raw, str):
        data = Path(data_raw).expanduser()
        if not data.is_dir():
            raise ValueError(f"{source}: data: {data} is not a folder")
    elif isinstance(data_raw, dict):
        renames = {"look": "look", "seed": "data_seed", "size": "size"}
        for k, v in data_raw.items():
            if k not in renames:
                raise ValueError(f"{source}: data.{k}: unknown; generated data has look, seed and size")
            generated[renames[k]] = _check_value(f"{source}: data.{k}", renames[k], v)
    else:
        raise ValueError(f"{source}: data: a dataset folder or {{look, seed, size}}, got {data_raw!r}")
    classes = raw.get("classes", "all")
    if classes == "all" or classes is None:
        classes = ()
    elif isinstance(classes, str):
        classes = (classes,)
    if not isinstance(classes, list | tuple) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{source}: classes: expected 'all' or a list of class names, got {classes!r}")
    base_raw = raw.get("base", {}) or {}
    if not isinstance(base_raw, dict):
        raise ValueError(f"{source}: base: expected a mapping of settings, got {base_raw!r}")
    grid_raw = raw.get("grid", {}) or {}
    if not isinstance(grid_raw, dict):
        raise ValueError(f"{source}: grid: expected a mapping of setting -> list of values, got {grid_raw!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(EvalConfig)} | EXTRA_SETTINGS
    base = dict(defaults) | generated
    for k, v in base_raw.items():
        base[k] = _check_value(f"{source}: base.{k}", k, v)
    axes: list[tuple[str, list]] = []
    for k, values in grid_raw.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{source}: grid.{k}: expected a non-empty list of values, got {values!r}")
        checked = [_check_value(f"{source}: grid.{k}[{i}]", k, v) for i, v in enumerate(values)]
        if len({json.dumps(v) for v in checked}) != len(checked):
            raise ValueError(f"{source}: grid.{k}: a value is listed twice: {values!r}")
        axes.append((k, checked))
    if data is not None:
        for k in ("look", "data_seed"):
            if k in base_raw or k in grid_raw:
                where = "base" if k in base_raw else "grid"
                raise ValueError(f"{source}: {where}.{k}: only for generated data (data: names a folder)")
    settings = []
    for combo in itertools.product(*[vals for _, vals in axes]):
        settings.append(base | {k: v for (k, _), v in zip(axes, combo, strict=True)})
    runs = raw.get("runs")
    if runs is not None and not isinstance(runs, str):
        raise ValueError(f"{source}: runs: expected a folder, got {runs!r}")
    device = raw.get("device")
    if device is not None and (not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda")):
        raise ValueError(f"{source}: device: expected cpu or cuda, got {device!r}")
    return Sweep(
        name=name, data=data, classes=tuple(classes), settings=tuple(settings),
        varying=tuple(k for k, vals in axes if len(vals) > 1), runs=None if runs is None else Path(runs),
        device=device, source=source, raw=dict(raw),
    )


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and validate a sweep file (YAML or TOML)."""
    path = Path(path).expanduser()
    return parse_sweep(_read_file(path), str(path))



def setting_name(setting: Mapping[str, Any], varying: tuple[str, ...]) -> str:
    """A setting's name in the report: its varying knobs as ``k=v``, or ``"base"`` for a one-setting sweep."""
    if not varying:
        return "base"
    return ", ".join(f"{k}={_short(setting[k])}" for k in varying)


def _short(v: Any) -> str:
    if isinstance(v, tuple):
        return "+".join(v) or "none"
    return str(v)
