"""Fixtures for the end-to-end tests: a real kube-apiserver + etcd (`cluster`) and a fake Entra ID.

The binaries are built (once per machine, cached outside the repo) right after collection, outside any
per-test timeout, and only when a collected test uses `cluster`. If they cannot be built or the cluster
cannot start, every test using `cluster` fails with the build/log output: these tests never skip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import ClusterError, TestCluster, ensure_binaries
from .fake_entra import FakeEntra

_bin_dir: Path | None = None
_build_error: BaseException | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    global _bin_dir, _build_error
    if _bin_dir is not None or not any("cluster" in getattr(i, "fixturenames", ()) for i in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
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
