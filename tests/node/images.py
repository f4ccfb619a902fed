"""Container images for the real-node tests: the project's image built from its Dockerfile by podman, and the
OCI archives containerd imports (no registry is reachable, so every image is built or exported locally).

`ensure_webhook_image()` runs hack/image/build.sh (cached by a content key: seconds when nothing changed) and
returns the image name; `podman(...)` runs podman with the only settings that work on this VM kind (runc, cgroupfs,
explicit ulimits): crun fails here and root lacks CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = REPO_ROOT / "hack" / "image" / "build.sh"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
IMAGE_BUILD_TIMEOUT_S = 1500.0


class ImageError(RuntimeError):
    """An image could not be built, exported or inspected; the message has the command's output."""


def run_script(script: Path, *args: str, timeout: float) -> str:
    """Run a hack/ script; its last stdout line is its result (a path or an image name)."""
    try:
        proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{script} timed out after {timeout:.0f}s:\n{exc.stderr!r}") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise ImageError(f"{script} failed (exit {proc.returncode}):\n--- stdout\n{proc.stdout[-3000:]}\n"
                         f"--- stderr\n{proc.stderr[-6000:]}")
    return lines[-1]


def ensure_webhook_image() -> str:
    """The project's image, built from the Dockerfile (once per content key); its name."""
    return run_script(IMAGE_SCRIPT, timeout=IMAGE_BUILD_TIMEOUT_S)


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """One podman command; raises ImageError with its output on failure when `check`."""
    try:
        proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"podman {' '.join(args)} timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise ImageError(f"podman {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def inspect_image(image: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman("image", "inspect", image).stdout)
    return data[0]


ARCHIVE_MAX_AGE_S = 3 * 86400.0
EXAMPLE_DIR = REPO_ROOT / "examples" / "keyvault-reader"


def save_oci_archive(image: str, path: Path) -> Path:
    """`podman save --format oci-archive`: what `ctr images import` reads; keeps the image's name.

    Archives are cached by image id beside `path`; those unused for ARCHIVE_MAX_AGE_S are removed (each new build
    of the image makes a new one)."""
    for old in path.parent.glob("*.oci.tar"):
        if old != path and time.time() - old.stat().st_mtime > ARCHIVE_MAX_AGE_S:
            old.unlink(missing_ok=True)
    if path.exists():
        path.touch()
    else:
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        podman("save", "--format", "oci-archive", "-o", str(tmp), image, timeout=300)
        tmp.rename(path)
    return path


def ensure_example_image(base_image: str) -> str:
    """examples/keyvault-reader built by podman from its Dockerfile on `base_image` (so `wi-webhook verify` is in
    it); tagged by a key of the example's files and the base's id, rebuilt only when one changes."""
    digest = hashlib.sha256(inspect_image(base_image)["Id"].encode())
    for path in sorted(EXAMPLE_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    image = f"localhost/keyvault-reader:test-{digest.hexdigest()[:16]}"
    if podman("image", "exists", image, check=False).returncode != 0:
        podman("build", "--pull=never", "--network", "host", *ULIMITS, "--build-arg", f"BASE={base_image}",
               "--tag", image, str(EXAMPLE_DIR), timeout=IMAGE_BUILD_TIMEOUT_S)
    return image


REFERENCE_IMAGES_SCRIPT = REPO_ROOT / "hack" / "reference" / "images.sh"


def ensure_reference_images() -> tuple[str, str, str]:
    """The reference's images (webhook, proxy, proxy-init) on the project's Debian base, built from its module by
    hack/reference/images.sh (cached by content); needs the base the project's image build makes."""
    webhook, proxy, proxy_init = run_script(REFERENCE_IMAGES_SCRIPT, timeout=IMAGE_BUILD_TIMEOUT_S).split()
    return webhook, proxy, proxy_init
