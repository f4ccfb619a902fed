"""The mypyc-compiled build for the tests and the benchmark: build the wheel once (cached), install it in isolation.

`compiled_wheel()` builds with this environment's mypy, as setup.py describes (`WI_WEBHOOK_COMPILE=1 pip wheel
--no-build-isolation --no-deps`), from a copy of the sources, so nothing is written into the checkout. The wheel is
cached outside the repo in `$WI_TEST_BIN_DIR` (default `~/.cache/wi-webhook-test-bin`, beside the test API server)
under `compiled-<key>/`. The key hashes everything the wheel's behaviour depends on, not only the compiled modules:
every file of the package (the wheel also carries the uncompiled modules, and mypyc compiles against their types),
pyproject.toml and setup.py, mypy's version and this interpreter's ABI. README.md is copied for the build but not
hashed: it is only the wheel's long description, and a documentation edit should not cost a rebuild. A fresh
machine builds it from nothing (about 80 s on 2 cores); the newest `KEEP` entries are kept, older ones removed.

`isolated_python()` installs the wheel into a fresh venv without system site-packages. Its dependencies come from
this (the development) environment through a plain path line in a `.pth` file: a directory added that way is not a
site directory, so its own `.pth` files, among them the editable install's finder that points at the checkout, are
not processed, and `webhook` can only be the wheel's. `probe()` shows what that interpreter really imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("WI_TEST_BIN_DIR") or Path.home() / ".cache" / "wi-webhook-test-bin")
KEEP = 3
BUILD_TIMEOUT = 900.0


def compiled_sources() -> list[str]:
    """The compiled modules' source paths, from their one list in pyproject.toml."""
    modules: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["wi-webhook"]["compiled"][
        "modules"]
    return modules


def compiled_modules() -> list[str]:
    """The same as module names: `webhook.mutation`, ..."""
    return [path.removesuffix(".py").replace("/", ".") for path in compiled_sources()]


def wheel_inputs() -> list[Path]:
    """Every file the wheel is built from, relative to ROOT."""
    return [Path("README.md"), *keyed_inputs()]


def keyed_inputs() -> list[Path]:
    """The files the cached wheel is keyed by: all of wheel_inputs() but the README."""
    package = [p.relative_to(ROOT) for p in sorted((ROOT / "webhook").rglob("*"))
               if p.is_file() and "__pycache__" not in p.parts]
    return [Path("pyproject.toml"), Path("setup.py"), *package]


def cache_key() -> str:
    digest = hashlib.sha256()
    for path in keyed_inputs():
        digest.update(f"{path.as_posix()}\0".encode())
        digest.update(hashlib.sha256((ROOT / path).read_bytes()).digest())
    digest.update(f"mypy {version('mypy')}\0{sys.implementation.cache_tag}\0{sysconfig.get_platform()}\0"
                  f"{sysconfig.get_config_var('EXT_SUFFIX')}".encode())
    return digest.hexdigest()[:24]


def _prune(keep: int = KEEP) -> None:
    entries = sorted(CACHE.glob("compiled-[0-9a-f]*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for scratch in CACHE.glob("compiled.tmp-*"):  # left by a build that was killed
        if time.time() - scratch.stat().st_mtime > 3600:
            shutil.rmtree(scratch, ignore_errors=True)


def compiled_wheel(timeout: float = BUILD_TIMEOUT) -> tuple[Path, bool]:
    """The compiled wheel for the sources as they are now, and whether it was built by this call."""
    entry = CACHE / f"compiled-{cache_key()}"
    wheels = sorted(entry.glob("*.whl"))
    if len(wheels) == 1:
        os.utime(entry)  # most recently used: kept by _prune
        return wheels[0], False
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compiled.tmp-", dir=CACHE) as scratch_name:
        scratch = Path(scratch_name)
        for path in wheel_inputs():
            (scratch / "src" / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, scratch / "src" / path)
        out = scratch / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
        env.update(WI_WEBHOOK_COMPILE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                                 "--no-index", "-w", str(out), str(scratch / "src")], cwd=scratch, env=env,
                                capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"the compiled build failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                               f"{result.stderr[-3000:]}")
        built = sorted(out.glob("*.whl"))
        if len(built) != 1:
            raise RuntimeError(f"expected one wheel, got {built}")
        (out / "build.json").write_text(json.dumps({"seconds": round(time.monotonic() - started, 1),
                                                    "mypy": version("mypy"), "python": sys.version}))
        try:
            out.rename(entry)
        except OSError:  # another run built the same entry meanwhile: use theirs
            if len(list(entry.glob("*.whl"))) != 1:
                raise
    _prune()
    return next(entry.glob("*.whl")), True


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def isolated_python(wheel: Path, venv: Path, timeout: float = 300) -> Path:
    """A fresh venv holding only `wheel`; its dependencies are read from this environment (see the docstring)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120,
                   capture_output=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=timeout, capture_output=True,
                   env=env)
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, timeout=60, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages) / "wi-webhook-dev-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


PROBE = """
import importlib, json, sys
names = sys.argv[1:]
for name in ["webhook", *names]:
    importlib.import_module(name)
print(json.dumps({"files": {n: sys.modules[n].__file__ for n in ["webhook", *names]}, "path": sys.path,
                  "meta_path": [(f if isinstance(f, type) else type(f)).__module__ + "."
                                + (f if isinstance(f, type) else type(f)).__qualname__ for f in sys.meta_path]}))
"""


def probe(python: Path, cwd: Path, modules: list[str] | None = None) -> dict[str, Any]:
    """What `python` imports for `webhook` and the compiled modules when started in `cwd`, and its sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([str(python), "-c", PROBE, *(modules or compiled_modules())], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def is_extension(file: str) -> bool:
    return file.endswith(tuple(s for s in (sysconfig.get_config_var("EXT_SUFFIX"), ".abi3.so", ".so") if s))
