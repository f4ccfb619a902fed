"""Runs pytest inside the isolated venv of the compiled build (see tests/compiled.py and tests/test_compiled.py).

    python compiled_runner.py REPORT.json MODULE[,MODULE...] FORBIDDEN_DIR -- PYTEST_ARGS...

Before and after the run it checks that every imported `webhook` module comes from this interpreter's own
installation (sys.prefix), that the listed modules are extension modules, that no sys.path entry holds a
`webhook` package other than that one (pytest inserts its rootdir into sys.path) and that no editable-install
finder is active; then it writes those findings and pytest's outcome counts to REPORT.json. Only the standard
library and pytest are used: this file runs with the compiled build's interpreter, not the development one.
"""

from __future__ import annotations

import importlib
import json
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest


def problems(modules: list[str], forbidden: Path) -> list[str]:
    prefix = Path(sys.prefix).resolve()
    found: list[str] = []
    for entry in sys.path:
        where = Path(entry or ".").resolve()
        if where == forbidden:
            found.append(f"sys.path holds the source tree: {entry}")
        if (where / "webhook").exists() and not where.is_relative_to(prefix):
            found.append(f"sys.path entry {entry} holds a webhook package")
    for finder in sys.meta_path:
        kind = finder if isinstance(finder, type) else type(finder)  # finders are classes or instances
        if "editable" in f"{kind.__module__}.{kind.__qualname__}".lower():
            found.append(f"an editable-install finder is active: {finder!r}")
    for name, module in sorted(sys.modules.items()):
        if name == "webhook" or name.startswith("webhook."):
            file = getattr(module, "__file__", None) or ""
            if not Path(file).resolve().is_relative_to(prefix):
                found.append(f"{name} was imported from {file}, outside {prefix}")
    for name in modules:
        file = getattr(sys.modules.get(name), "__file__", None) or ""
        if not file.endswith(tuple(EXTENSION_SUFFIXES)):
            found.append(f"{name} is not an extension module: {file}")
    return found


class Outcome:
    """Collects pytest's outcome counts (as its closing line shows them) and the import checks after the run."""

    def __init__(self, modules: list[str], forbidden: Path) -> None:
        self.modules, self.forbidden = modules, forbidden
        self.counts: dict[str, int] = {}
        self.after: list[str] = []

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        reporter: Any = session.config.pluginmanager.get_plugin("terminalreporter")
        stats: dict[str, list[Any]] = getattr(reporter, "stats", {})
        self.counts = {key: len(value) for key, value in stats.items() if key}
        self.after = problems(self.modules, self.forbidden)


def main(argv: list[str]) -> int:
    split = argv.index("--")
    report, modules_arg, forbidden_arg = argv[:split]
    pytest_args = argv[split + 1:]
    modules = modules_arg.split(",")
    forbidden = Path(forbidden_arg).resolve()
    for name in modules:
        importlib.import_module(name)
    before = problems(modules, forbidden)
    files = {name: str(sys.modules[name].__file__) for name in ["webhook", *modules]}
    outcome = Outcome(modules, forbidden)
    code = int(pytest.main(pytest_args, plugins=[outcome])) if not before else -1
    Path(report).write_text(json.dumps({"exit": code, "counts": outcome.counts, "before": before,
                                        "after": outcome.after, "files": files}, indent=1))
    return 0 if code == 0 and not outcome.after else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
