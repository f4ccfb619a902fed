"""`verify`'s pure parts (claims decoding, Entra error advice) and the keyvault-reader example's manifests."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.support import TENANT
from webhook.cli.main import main
from webhook.cli.verify import advice_for, decode_claims, run_verify

CLAIMS = {"iss": "https://oidc.example/abc/", "sub": "system:serviceaccount:ns:app"}
ENV = {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com/"}


@pytest.mark.parametrize(("error", "diagnosis", "fix"), [
    ("AADSTS70021: No matching federated identity record found", "no federated identity credential",
     "--issuer https://oidc.example/abc/ --subject system:serviceaccount:ns:app --audience api://AzureADTokenExchange"),
    ("AADSTS700016: Application with identifier 'c' was not found", "application c was not found", "clientId"),
    ("AADSTS90002: Tenant 't' not found", "tenant t was not found", "az account show"),
    ("AADSTS700024: Client assertion is not within its valid time range", "clock skew", "NTP"),
    ("AADSTS50166: Request to External OIDC endpoint failed", "OIDC issuer", "--enable-oidc-issuer"),
    ("AADSTS12345: something else", "AADSTS12345", "code=12345"),
    ("Connection refused", "could not be reached", "NetworkPolicies"),
])
def test_advice(error: str, diagnosis: str, fix: str) -> None:
    got_diagnosis, got_fix = advice_for(error, CLAIMS, ENV)
    assert diagnosis in got_diagnosis and fix in got_fix


def test_fic_command_uses_the_token_audience() -> None:
    _, fix = advice_for("AADSTS70021", {**CLAIMS, "aud": ["api://AzureADTokenExchangeChina"]}, ENV)
    assert "--audience api://AzureADTokenExchangeChina" in fix


def test_decode_claims() -> None:
    payload = base64.urlsafe_b64encode(json.dumps(CLAIMS).encode()).decode().rstrip("=")
    assert decode_claims(f"e30.{payload}.sig") == CLAIMS
    with pytest.raises(ValueError, match="not a JWT"):
        decode_claims("abc")


def test_missing_env_fails_first() -> None:
    report = run_verify({})
    assert not report.ok and report.checks[0].status == "fail" and "AZURE_CLIENT_ID" in report.checks[0].detail


def test_keyvault_flags_go_together(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--keyvault", "https://v.vault.azure.net/"]) == 2
    assert "--keyvault and --secret go together" in capsys.readouterr().err


def test_keyvault_reader_example_passes_check(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AZURE_TENANT_ID", TENANT)
    manifests = Path(__file__).resolve().parent.parent / "examples/keyvault-reader/manifests"
    assert main(["check", "-f", str(manifests), "-o", "json", "--warnings-as-errors"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == {"workloads": 1, "injected": 1, "denied": 0, "warnings": 0}
