"""Fixtures for the end-to-end tests: a real kube-apiserver + etcd (`cluster`) and a fake Entra ID.

The binaries are built (once per machine, cached outside the repo) right after collection, outside any
per-test timeout, and only when a collected test uses `cluster`. If they cannot be built or the cluster
cannot start, every test using `cluster` fails with the build/log output: these tests never skip.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import ClusterError, TestCluster, ensure_binaries
from .fake_entra import FakeEntra

_bin_dir: Path | None = None
_build_error: BaseException | None = None
_reference_dir: Path | None = None
_reference_error: BaseException | None = None
REFERENCE_BUILD = Path(__file__).resolve().parents[2] / "hack" / "reference" / "build.sh"


def pytest_collection_finish(session: pytest.Session) -> None:
    global _bin_dir, _build_error, _reference_dir, _reference_error
    used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if _reference_dir is None and _reference_error is None and "reference_bin" in used:
        t0 = time.monotonic()
        if reporter is not None:
            reporter.write_line("e2e: hack/reference/build.sh (the reference webhook v1.6.0; ~2 min cold) ...")
        try:
            proc = subprocess.run(["bash", str(REFERENCE_BUILD)], capture_output=True, text=True, timeout=1800,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            _reference_error = ClusterError(f"{REFERENCE_BUILD} timed out after 1800s")
        else:
            if proc.returncode == 0 and proc.stdout.strip():
                _reference_dir = Path(proc.stdout.strip().splitlines()[-1])
            else:
                _reference_error = ClusterError(f"{REFERENCE_BUILD} failed (exit {proc.returncode}):\n{proc.stderr}")
        if reporter is not None:
            outcome = "FAILED" if _reference_error is not None else f"ok: {_reference_dir}"
            reporter.write_line(f"e2e: reference build {outcome} ({time.monotonic() - t0:.1f}s)")
    if _bin_dir is not None or "cluster" not in used:
        return
    t0 = time.monotonic()
    if reporter is not None:
        reporter.write_line("e2e: hack/test-apiserver/build.sh (a cold build of kube-apiserver takes ~13 min) ...")
    try:
        _bin_dir = ensure_binaries()
    except ClusterError as exc:
        _build_error = exc
    if reporter is not None:
        outcome = "FAILED" if _build_error is not None else f"ok: {_bin_dir}"
        reporter.write_line(f"e2e: build.sh {outcome} ({time.monotonic() - t0:.1f}s)")


@pytest.fixture(scope="session")
def reference_bin() -> Path:
    """The directory with the reference's `azwi-webhook` and `azwi-proxy` (built before the tests, cached)."""
    if _reference_error is not None:
        raise _reference_error
    assert _reference_dir is not None
    return _reference_dir


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """etcd + kube-apiserver for the whole session; always stopped at the end."""
    if _build_error is not None:
        raise _build_error
    c = TestCluster.start(tmp_path_factory.mktemp("cluster"), bin_dir=_bin_dir)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def fake_entra_server(cluster: TestCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEntra]:
    """One fake Entra ID for the session, trusting the cluster's CA to read its OIDC discovery."""
    fake = FakeEntra(tmp_path_factory.mktemp("fake-entra"), trusted_ca_files=[cluster.ca_file]).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_entra(fake_entra_server: FakeEntra, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEntra]:
    """The session's fake Entra ID, with AZURE_AUTHORITY_HOST/REQUESTS_CA_BUNDLE set; reset after the test."""
    for name, value in fake_entra_server.env().items():
        monkeypatch.setenv(name, value)
    try:
        yield fake_entra_server
    finally:
        fake_entra_server.reset()
