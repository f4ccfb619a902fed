"""Fixtures for the real-node tests: the project's image (`webhook_image`) and, later in this package, a real
single-node cluster. The slow builds run right after collection, outside any per-test timeout, and only when a
collected test needs them; a failed build fails those tests with its output (they never skip)."""

from __future__ import annotations

import time

import pytest

from tests.node.images import ImageError, ensure_webhook_image

_image: str | None = None
_image_error: BaseException | None = None


def _uses(session: pytest.Session, fixture: str) -> bool:
    return any(fixture in getattr(item, "fixturenames", ()) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    global _image, _image_error
    if _image is not None or not _uses(session, "webhook_image"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    t0 = time.monotonic()
    if reporter is not None:
        reporter.write_line("node: hack/image/build.sh (podman build of the Dockerfile; first time ~2-4 min) ...")
    try:
        _image = ensure_webhook_image()
    except ImageError as exc:
        _image_error = exc
    if reporter is not None:
        outcome = "FAILED" if _image_error is not None else f"ok: {_image}"
        reporter.write_line(f"node: image {outcome} ({time.monotonic() - t0:.1f}s)")


@pytest.fixture(scope="session")
def webhook_image() -> str:
    """The image built from the Dockerfile (podman), e.g. localhost/workload-identity-webhook:test-<key>."""
    if _image_error is not None:
        raise _image_error
    assert _image is not None, "hack/image/build.sh did not run (pytest_collection_finish)"
    return _image
