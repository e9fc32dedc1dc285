"""Packaging: pyproject, environment.yml, README commands and .ci/run agree; the CLI answers."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_every_runtime_dependency():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = (ROOT / "environment.yml").read_text()
    env_names = {_name(line.strip()[2:]) for line in env.splitlines() if line.strip().startswith("- ")}
    missing = [d for d in deps if _name(d) not in env_names]
    assert not missing, f"environment.yml lacks {missing}"
    assert "python=3.11" in env and "-e .[dev,browser]" in env  # the same extras as README.md's pip line


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [ln for b in blocks for ln in b.splitlines() if ln and not ln.startswith("#")]
    setup = next(c for c in commands if c.startswith("pip install"))
    test = next(c for c in commands if "pytest" in c)
    assert setup in ci and test in ci
    assert "splatlab demo" in commands


def test_cli_help_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "splatlab.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "data check" in out.stdout and "demo" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "splatlab.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_import_is_cheap_and_side_effect_free():
    code = "import sys, splatlab; assert 'torch' not in sys.modules and 'gsplat' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_cli_command_resolves_to_a_function():
    import importlib

    from splatlab.cli import COMMANDS

    for name, target in COMMANDS.items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_demo_help_lists_its_flags():
    out = subprocess.run(
        [sys.executable, "-m", "splatlab.cli", "demo", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "--all" in out.stdout and "--class-name" in out.stdout
