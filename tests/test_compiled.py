"""The optional mypyc-compiled build (setup.py, WI_WEBHOOK_COMPILE=1) behaves exactly like the sources.

The main test builds the compiled wheel (cached by tests/compiled.py; about 80 s when the sources or mypy changed),
installs it into an isolated venv, proves that there `webhook.mutation`, `webhook.admission` and `webhook.decisions`
are extension modules and that the checkout cannot be imported, and runs the unit suite against it in a subprocess
(tests/compiled_runner.py), from a copy of tests/ and the data the tests read (examples/, charts/, bench/) in which
the `webhook` package does not exist. Left out of that run, each for a reason:

- tests/e2e: the real API server suite (minutes; it exercises the same server code paths as test_server.py, which
  does run compiled);
- tests/test_dockerfile.py: packaging of the checkout itself (it builds its own wheels from the sources, compiled
  included); nothing in it imports the package under test;
- tests/test_compiled.py: this file.

test_sustained.py (60 s at 1,000 reviews/s with a bounded RSS) does run: a reference-count leak in compiled code
would show there and nowhere else.

The other tests here are fast: the checkout stays pure Python, the import guard in webhook/__init__.py, and
setup.py's refusals and messages.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import webhook
from tests.compiled import (
    ROOT,
    compiled_modules,
    compiled_sources,
    compiled_wheel,
    is_extension,
    isolated_python,
    probe,
    wheel_names,
)

SUITE_TIMEOUT = 1500  # the unit suite takes about 3 minutes here; pytest-timeout bounds each test at 300 s
EXCLUDED = ("tests/e2e", "tests/test_dockerfile.py", "tests/test_compiled.py")
MIRRORED = ("tests", "examples", "charts", "bench")


def test_the_compiled_modules_are_listed_once_and_exist() -> None:
    sources = compiled_sources()
    assert sources == ["webhook/mutation.py", "webhook/admission.py", "webhook/decisions.py", "webhook/memo.py",
                       "webhook/policy.py", "webhook/handler.py",
                       "webhook/stats.py"]  # every module a review goes through
    assert all((ROOT / source).is_file() for source in sources)
    assert len(set(sources)) == len(sources)
    assert "webhook/policyschema.py" not in sources  # pydantic models: mypyc cannot compile them


def test_the_checkout_is_pure_python() -> None:
    extensions = [p for p in (ROOT / "webhook").rglob("*") if is_extension(p.name) or p.suffix in {".c", ".pyd"}]
    assert not extensions, f"compiled artefacts in the source tree: {extensions}"
    for name in ["webhook", *compiled_modules()]:
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").suffix == ".py", module.__file__


def test_a_stale_extension_module_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mutation.py").write_text("X = 1\n")
    (tmp_path / "cli.py").write_text("")
    assert webhook.stale_extensions(tmp_path) == []
    extension = tmp_path / "mutation.cpython-311-x86_64-linux-gnu.so"
    extension.write_bytes(b"")
    assert webhook.stale_extensions(tmp_path) == ["mutation"]  # no record: e.g. a manual mypyc run
    record = {"sources": {"mutation": hashlib.sha256(b"X = 1\n").hexdigest()}}
    (tmp_path / webhook.COMPILED_RECORD).write_text(json.dumps(record))
    assert webhook.stale_extensions(tmp_path) == []  # as installed from the compiled wheel
    (tmp_path / "mutation.py").write_text("X = 2\n")
    assert webhook.stale_extensions(tmp_path) == ["mutation"]  # the source was edited after the build
    (tmp_path / "mutation.py").unlink()
    assert webhook.stale_extensions(tmp_path) == []  # nothing to shadow


def test_importing_a_package_with_a_stale_extension_fails_clearly(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "webhook", tmp_path / "webhook", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "webhook" / "decisions.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", "import webhook"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "ImportError: compiled module(s) decisions in" in result.stderr
    assert "git clean -fX webhook" in result.stderr


def _sources_copy(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "webhook", src / "webhook", ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _setup(src: Path, *args: str, env: dict[str, str], block_mypyc: bool = False) -> subprocess.CompletedProcess[str]:
    code = ("import runpy, sys\n"
            + ("sys.modules['mypyc'] = sys.modules['mypyc.build'] = None\n" if block_mypyc else "")
            + f"sys.argv = ['setup.py', *{list(args)!r}]\nrunpy.run_path('setup.py', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=src, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_setup_py_says_what_is_missing_or_wrong(tmp_path: Path) -> None:
    src = _sources_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = _setup(src, "bdist_wheel", env={**env, "WI_WEBHOOK_COMPILE": "1"}, block_mypyc=True)
    assert result.returncode != 0
    assert "needs mypyc, which comes with mypy" in result.stderr and "--no-build-isolation" in result.stderr
    result = _setup(src, "build_ext", "--inplace", env={**env, "WI_WEBHOOK_COMPILE": "1"})
    assert result.returncode != 0 and "never built in place" in result.stderr
    result = _setup(src, "bdist_wheel", env={**env, "WI_WEBHOOK_COMPILE": "maybe"})
    assert result.returncode != 0 and "WI_WEBHOOK_COMPILE='maybe'" in result.stderr
    assert not [p for p in src.rglob("*") if is_extension(p.name) or p.suffix == ".c"]


def test_the_default_build_is_pure_python(tmp_path: Path) -> None:
    src = _sources_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "WI_WEBHOOK_COMPILE"))}
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                             "-w", str(tmp_path / "out"), str(src)], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = (tmp_path / "out").glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = wheel_names(wheel)
    assert not [n for n in names if is_extension(n)] and "webhook/_compiled.json" not in names


def _mirror(tmp_path: Path) -> Path:
    """The tests and the data they read, without the `webhook` package."""
    mirror = tmp_path / "mirror"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in MIRRORED:
        shutil.copytree(ROOT / name, mirror / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", mirror / "pyproject.toml")  # pytest's settings
    assert not (mirror / "webhook").exists()
    return mirror


def test_the_compiled_build_passes_the_unit_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    wheel, built = compiled_wheel()
    build_seconds = time.monotonic() - started

    # The wheel: an extension module for each compiled module (sources kept beside them), everything else as .py.
    names = wheel_names(wheel)
    assert "-cp3" in wheel.name and not wheel.name.endswith("-none-any.whl"), wheel.name
    for module in compiled_modules():
        path = module.replace(".", "/")
        assert [n for n in names if n.startswith(path + ".") and is_extension(n)], (module, sorted(names))
    for source in (ROOT / "webhook").glob("*.py"):
        assert f"webhook/{source.name}" in names, source.name
    assert "webhook/py.typed" in names and "webhook/_compiled.json" in names

    # Installed in isolation: the compiled modules are extension modules, the checkout is not importable.
    python = isolated_python(wheel, tmp_path / "venv")
    mirror = _mirror(tmp_path)
    found = probe(python, mirror)
    prefix = (tmp_path / "venv").resolve()
    for name, file in found["files"].items():
        assert Path(file).resolve().is_relative_to(prefix), (name, file)
    assert all(is_extension(found["files"][m]) for m in compiled_modules()), found["files"]
    assert not any("editable" in finder.lower() for finder in found["meta_path"]), found["meta_path"]
    assert str(ROOT) not in found["path"], found["path"]

    # The unit suite against the compiled package.
    report = tmp_path / "report.json"
    log = tmp_path / "suite.log"
    args = ["-q", "-p", "no:cacheprovider", "tests", *(f"--ignore={path}" for path in EXCLUDED)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PYTEST_"))}
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run([str(python), str(mirror / "tests" / "compiled_runner.py"), str(report),
                                 ",".join(compiled_modules()), str(ROOT), "--", *args], cwd=mirror, env=env,
                                stdout=out, stderr=subprocess.STDOUT, timeout=SUITE_TIMEOUT, check=False)
    suite_seconds = time.monotonic() - started
    output = log.read_text(errors="replace")
    assert report.exists(), output[-6000:]
    outcome = json.loads(report.read_text())
    assert not outcome["before"] and not outcome["after"], (outcome, output[-3000:])
    counts = outcome["counts"]
    assert result.returncode == 0 and outcome["exit"] == 0, output[-8000:]
    assert counts.get("passed", 0) > 100 and not counts.get("failed") and not counts.get("error"), counts
    with capsys.disabled():
        print(f"\ncompiled: wheel {'built' if built else 'cached'} in {build_seconds:.0f} s ({wheel.name}); unit "
              f"suite against it: {counts} in {suite_seconds:.0f} s; "
              + ", ".join(f"{m} {Path(f).name}" for m, f in outcome["files"].items() if m in compiled_modules()))
