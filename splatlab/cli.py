"""The ``splatlab`` command line.

Each command is a plain function in the module that owns the concept; tyro turns its signature and
docstring into flags. Modules are imported only when their command runs, so ``splatlab --help`` is fast.

User errors are turned into messages here, and only here (:func:`user_error_message`): a ``ValueError`` or
``OSError`` (``FileNotFoundError``, ``PermissionError``…) raised by a command becomes one line on stderr,
``splatlab <command>: <path or argument>: <what is wrong>``, and exit code 2. Library messages start with the
file or argument they are about, so the line names it. ``--debug`` (anywhere on the line) shows the
traceback instead; any other exception is a bug and always shows its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

# "words on the command line" -> "module:function". Longest match wins ("data check" before "data").
COMMANDS: dict[str, str] = {
    "demo": "splatlab.demo:demo_cli",
    "detect": "splatlab.detect_cli:detect_cli",
    "evaluate": "splatlab.evaluate_cli:evaluate_cli",
    "data check": "splatlab.data.check:check_cli",
    "data make": "splatlab.data.make:make_cli",
    "sweep": "splatlab.sweep:sweep_cli",
    "train": "splatlab.train:train_cli",
    "view": "splatlab.viz.viewer:view_cli",
}

_HELP = {
    "demo": "make the default data if absent, train, detect and evaluate one class (--all for every class)",
    "detect": "pose, anomaly map, score and decision for your own images, from a run folder",
    "evaluate": "the MAD-style evaluation of whole classes, baselines, a report folder (--pose: poses only)",
    "sweep": "a grid of classes x settings from a YAML/TOML file: local process pool, or Ray (--ray)",
    "data check": "validate a MAD-layout folder and print a per-class summary",
    "data make": "generate a MAD-style dataset from LEGO parts or any mesh",
    "train": "train splats of the defect-free object from its posed training views",
    "view": "open a run folder in the viser 3D viewer",
}


def _usage() -> str:
    lines = ["usage: splatlab COMMAND [ARGS...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}}  {_HELP.get(name, '')}" for name in COMMANDS]
    lines += ["", "Run `splatlab COMMAND --help` for the flags of one command; --debug shows tracebacks."]
    return "\n".join(lines)


# What a command raises for bad input: reported in one line, exit code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def user_error_message(command: str, exc: BaseException) -> str:
    """The one line shown for a user error: ``splatlab <command>: <path>: <what is wrong>``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{exc.filename}: {exc.strerror or text}"
    return f"splatlab {command}: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from splatlab import __version__

        print(__version__)
        return 0
    for n_words in (2, 1):
        name = " ".join(argv[:n_words])
        if len(argv) >= n_words and name in COMMANDS:
            break
    else:
        print(f"splatlab: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    # torch's OpenMP threads spin after each op and starve the Numba renderer's threads (2-5x slower
    # renders on 2 cores); this only takes effect before torch is imported, which the CLI has not done yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if debug:
        logging.getLogger("splatlab").setLevel(logging.DEBUG)
    module_name, func_name = COMMANDS[name].split(":")
    func = getattr(importlib.import_module(module_name), func_name)

    import tyro

    try:
        result = tyro.cli(func, args=argv[n_words:], prog=f"splatlab {name}")
    except USER_ERRORS as exc:
        if debug:
            raise
        print(user_error_message(name, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"splatlab {name}: interrupted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
