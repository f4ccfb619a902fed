"""Build script for the optional mypyc-compiled wheel. The metadata stays in pyproject.toml.

By default (`pip install .`, `pip install -e .`, `pip wheel .`) this adds nothing: the package is pure Python and no
compiler is needed. With WI_WEBHOOK_COMPILE=1 the hot-path modules listed in pyproject.toml under
[tool.wi-webhook.compiled] are compiled with mypyc, taken from the build environment (so build without isolation, in
an environment with mypy, setuptools and a C compiler; the Dockerfile's build stage pins them):

    pip install mypy setuptools
    WI_WEBHOOK_COMPILE=1 pip wheel --no-build-isolation --no-deps . -w DIR

Decisions:
- Compiling is opt-in and only ever produces a wheel. It never happens in place: the generated C, the object files
  and setuptools' build tree go to a temporary directory, and an in-place build (`pip install -e .` or
  `setup.py build_ext --inplace` with the variable set) is refused. An extension module next to its source would
  shadow it (Python's import system prefers `mutation.cpython-*.so` to `mutation.py`), so an edited source would
  silently not run; the development install therefore always stays pure Python.
- The wheel keeps the compiled modules' sources next to their extensions (as mypy's own wheels do), so tracebacks
  and `inspect` show the code, and records each source's sha256 in `webhook/_compiled.json`; webhook/__init__.py
  refuses to import a compiled module whose source no longer matches (or that has no such record at all, as after
  a manual `mypyc webhook/mutation.py` in a checkout).
- The compiled modules share one mypyc group, `wi_webhook` (a top-level `wi_webhook__mypyc` library), so calls
  between them stay native calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
FLAG = "WI_WEBHOOK_COMPILE"
MARKER = "_compiled.json"  # in the compiled wheel's `webhook` package; read by webhook/__init__.py
GROUP = "wi_webhook"
HOW = f"{FLAG}=1 pip wheel --no-build-isolation --no-deps . -w DIR"
IN_PLACE_COMMANDS = frozenset({"editable_wheel", "develop"})  # `pip install -e .`, `setup.py develop`


def compiled_modules() -> list[str]:
    """The source paths to compile (relative to this directory), from pyproject.toml."""
    with (HERE / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["wi-webhook"]["compiled"]["modules"]
    return modules


def compile_requested() -> bool:
    value = os.environ.get(FLAG, "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise SystemExit(f"{FLAG}={os.environ[FLAG]!r}: set it to 1 to compile with mypyc, or to 0 (or unset it) "
                     "for the pure Python package")


def check_toolchain() -> None:
    """Fail early, naming what to install, instead of deep inside mypyc, setuptools or the compiler."""
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        raise SystemExit(
            f"{FLAG}=1 needs mypyc, which comes with mypy, in the build environment, and pip's default build "
            "isolation hides it: `pip install mypy setuptools` (the Dockerfile pins the versions the image uses), "
            f"then build with `{HOW}`") from None
    try:
        import setuptools.command.bdist_wheel  # noqa: F401  (setuptools >= 70.1)
    except ImportError:
        try:
            import wheel  # noqa: F401
        except ImportError:
            raise SystemExit(f"{FLAG}=1 builds without isolation, so the environment's setuptools makes the wheel: "
                             "pip install 'setuptools>=70.1'") from None
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise SystemExit(f"{FLAG}=1 needs a C compiler and Python's headers: {compiler!r} was not found "
                         "(Debian: apt-get install gcc libc6-dev)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        raise SystemExit(f"{FLAG}=1 needs Python's C headers (Python.h), e.g. apt-get install python3-dev")


class CompiledDistribution(Distribution):
    """Declares extension modules when a command builds something, so that the wheel is tagged for this platform
    and ABI and build_ext runs, and leaves running mypyc to build_ext. pip also runs this script for the build
    requirements and the metadata (egg_info, dist_info), which need no compiling: mypyc then does not run."""

    METADATA_ONLY = frozenset({"egg_info", "dist_info", "sdist"})

    def has_ext_modules(self) -> bool:
        return bool(self.commands) and not self.METADATA_ONLY.issuperset(self.commands)


class BuildExt(build_ext):
    """Runs mypyc when the extensions are really built, in a temporary directory, never in place."""

    scratch: str | None = None  # set by main() for the duration of setup()

    def finalize_options(self) -> None:
        if compile_requested() and not self.distribution.ext_modules:
            if self.inplace or self.editable_mode or IN_PLACE_COMMANDS & set(self.distribution.commands):
                raise SystemExit(f"{FLAG}=1 builds a wheel only: compiled modules are never built in place, where "
                                 "they would shadow the sources (an editable install stays pure Python). Use " + HOW)
            assert self.scratch, "BuildExt.scratch is set while setup() runs"
            check_toolchain()
            from mypyc.build import mypycify

            os.environ["MYPY_CACHE_DIR"] = str(Path(self.scratch) / "mypy-cache")  # out of the tree, too
            # setuptools only accepts extension sources relative to this directory, hence a relative path.
            c_dir = os.path.relpath(Path(self.scratch) / "c")
            self.distribution.ext_modules = mypycify(compiled_modules(), opt_level="3", group_name=GROUP,
                                                     target_dir=c_dir)
            print(f"setup.py: mypyc compiled {', '.join(compiled_modules())} to {c_dir}", file=sys.stderr)
        super().finalize_options()


class BuildPy(build_py):
    """Also writes the sha256 of each compiled module's source into the wheel (compiled builds only)."""

    def run(self) -> None:
        super().run()
        if not compile_requested():
            return
        import mypy.version

        sources = {}
        for path in compiled_modules():
            built = Path(self.build_lib) / path
            sources[built.stem] = hashlib.sha256(built.read_bytes()).hexdigest()
        record = {"compiler": f"mypyc {mypy.version.__version__}", "sources": sources}
        (Path(self.build_lib) / "webhook" / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


def main() -> None:
    commands: dict[str, Any] = {"build_py": BuildPy, "build_ext": BuildExt}
    if not compile_requested():
        setup(cmdclass=commands)
        return
    with tempfile.TemporaryDirectory(prefix="wi-webhook-mypyc-") as scratch:
        BuildExt.scratch = scratch
        setup(cmdclass=commands, distclass=CompiledDistribution,
              options={"build": {"build_base": str(Path(scratch) / "build")}, "egg_info": {"egg_base": scratch}})


if __name__ == "__main__":
    main()
