"""The serving certificate reloader keeps the previous pair when a new one does not load."""

from __future__ import annotations

import ssl
from pathlib import Path

from tests.processes import make_certs
from webhook.certificates import generate as certs
from webhook.serving.tls import ServingCertificate


def handshake(server: ssl.SSLContext, cafile: Path) -> bool:
    """A TLS handshake through memory BIOs (no sockets)."""
    client = ssl.create_default_context(cafile=str(cafile))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client_side, server_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        try:
            client_side.do_handshake()
            server_side.do_handshake()
            return True
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError:
            return False
    return False


def test_mismatched_pair_keeps_the_previous_one(tmp_path: Path) -> None:
    ca_file = make_certs(tmp_path)
    serving = ServingCertificate(tmp_path, "1.2")
    assert serving.refresh() and handshake(serving.context, ca_file)
    other = certs.generate_serving(certs.generate_ca(), ["127.0.0.1"])
    (tmp_path / "tls.key").write_bytes(other.key_pem)  # a key that does not match tls.crt
    assert serving.refresh() is False and "cannot load" in serving.last_error
    assert handshake(serving.context, ca_file), "the live context lost its certificate"
    (tmp_path / "tls.crt").write_bytes(b"not a certificate")
    assert serving.refresh() is False and handshake(serving.context, ca_file)


def test_new_pair_is_used(tmp_path: Path) -> None:
    make_certs(tmp_path)
    serving = ServingCertificate(tmp_path, "1.2")
    assert serving.refresh()
    fresh_dir = tmp_path / "fresh"
    fresh_ca = make_certs(fresh_dir)
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_bytes((fresh_dir / name).read_bytes())
    assert serving.refresh() and handshake(serving.context, fresh_ca)
    assert serving.refresh() is False  # unchanged files: nothing to do
