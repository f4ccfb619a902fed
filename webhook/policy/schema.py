"""The policy file's schema (`--policy`): pydantic models and the parser whose errors name each bad key.

Kept apart from the checks in policy/evaluate.py, which run per request: reading a policy file and checking a pod are
separate concerns.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from webhook.core.constants import MAX_TOKEN_EXPIRATION, MIN_TOKEN_EXPIRATION
from webhook.policy.rules import RULES, STRICTNESS, Mode, rule_id


def _mode_text(value: Any) -> Any:
    """A mode as written. YAML 1.1 reads an unquoted `off` as false: accept that as "off" (what was meant)."""
    if value is False:
        return Mode.OFF.value
    return value.strip().lower() if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class IdentityGrant(_Strict):
    """One allowed identity: its client id, and the namespaces and ServiceAccounts (globs) that may use it."""

    client_id: str = Field(alias="clientId")
    namespaces: list[str] = Field(default_factory=lambda: ["*"])
    service_accounts: list[str] = Field(default_factory=lambda: ["*"], alias="serviceAccounts")

    def allows(self, client_id: str, namespace: str, service_account: str) -> bool:
        return (self.client_id.lower() == client_id.lower()
                and any(fnmatch.fnmatchcase(namespace, g) for g in self.namespaces)
                and any(fnmatch.fnmatchcase(service_account, g) for g in self.service_accounts))


class ExpirationBounds(_Strict):
    min: int = Field(default=MIN_TOKEN_EXPIRATION, ge=MIN_TOKEN_EXPIRATION, le=MAX_TOKEN_EXPIRATION)
    max: int = Field(default=MAX_TOKEN_EXPIRATION, ge=MIN_TOKEN_EXPIRATION, le=MAX_TOKEN_EXPIRATION)

    @model_validator(mode="after")
    def _ordered(self) -> ExpirationBounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class NamespaceRules(_Strict):
    allow: list[str] | None = None
    deny: list[str] = Field(default_factory=list)

    def forbids(self, namespace: str) -> bool:
        if any(fnmatch.fnmatchcase(namespace, g) for g in self.deny):
            return True
        return self.allow is not None and not any(fnmatch.fnmatchcase(namespace, g) for g in self.allow)


class Policy(_Strict):
    """The policy file (`--policy`). Unknown keys are errors that name the key."""

    api_version: str = Field(default="wi-webhook.io/v1", alias="apiVersion")
    kind: str = "Policy"
    modes: dict[str, Mode] = Field(default_factory=dict)
    token_expiration: ExpirationBounds = Field(default_factory=ExpirationBounds, alias="tokenExpiration")
    namespaces: NamespaceRules | None = None
    identities: list[IdentityGrant] | None = None
    namespace_overrides: bool = Field(default=True, alias="namespaceOverrides")

    @field_validator("modes", mode="before")
    @classmethod
    def _rule_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {rule_id(str(k)): _mode_text(v) for k, v in value.items()}
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != "Policy":
            raise ValueError(f"must be Policy; got {value!r}")
        return value

    def mode_for(self, rid: str, overrides: Mapping[str, Mode] | None = None) -> Mode:
        """The mode rule `rid` runs in: the policy file's (else the rule's default), unless the namespace overrides
        it (`overrides`, from its labels) and the policy lets namespaces do so."""
        rule = RULES[rid]
        if rule.fixed_mode:
            return rule.default
        configured = self.modes.get(rid, rule.default)
        if overrides and rid in overrides and self.namespace_overrides:
            override = overrides[rid]
            if rule.no_weakening and STRICTNESS[override] < STRICTNESS[configured]:
                return configured
            return override
        return configured


DEFAULT_POLICY = Policy()


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and each bad key."""


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate a policy document, reporting every problem at once (one line per key), in the project's words."""
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping (apiVersion, kind, modes, ...)")
    problems: list[str] = []
    if isinstance(data.get("modes"), dict):
        modes, problems = _check_modes(data["modes"])
        data = {**data, "modes": modes}
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            problems.append(f"  {where}: {_explain(error)}")
    if problems:
        raise PolicyError("\n".join([f"{source}: invalid policy ({len(problems)} problems):" if len(problems) > 1
                                     else f"{source}: invalid policy:", *problems]))
    return policy


def _check_modes(raw: dict[Any, Any]) -> tuple[dict[str, str], list[str]]:
    """The valid part of `modes` (by rule ID), and one problem line per unknown rule or mode."""
    valid: dict[str, str] = {}
    problems: list[str] = []
    names = ", ".join(m.value for m in Mode)
    for key, value in raw.items():
        try:
            rid = rule_id(str(key))
        except ValueError as exc:
            problems.append(f"  modes.{key}: {exc}")
            continue
        mode = _mode_text(value)
        if not isinstance(mode, str) or mode not in {m.value for m in Mode}:
            problems.append(f"  modes.{key}: {value!r} is not a mode; use one of {names}")
            continue
        if RULES[rid].fixed_mode and mode != RULES[rid].default.value:
            problems.append(f"  modes.{key}: {rid}'s mode is fixed at {RULES[rid].default.value} (the reference "
                            "denies such pods, and this webhook never answers more leniently); remove this entry")
            continue
        valid[rid] = mode
    return valid, problems


_MESSAGES = {
    "missing": "is required",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _explain(error: Any) -> str:
    """pydantic's error in the policy file's terms (no "Value error, " prefix, no "Input should be")."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = f"; got {error['input']!r}" if "input" in error and kind != "missing" else ""
    if kind == "extra_forbidden":
        return f"unknown key; allowed keys here: {', '.join(_allowed_keys(error['loc'][:-1]))}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        return f"must be {'at least' if kind == 'greater_than_equal' else 'at most'} {bound}{got}"
    if kind == "enum":
        return f"must be one of {ctx.get('expected', '')}{got}"
    return f"{_MESSAGES.get(kind, error['msg'])}{got}"


def _allowed_keys(parent: tuple[int | str, ...]) -> list[str]:
    """The keys the policy accepts at a location (for 'unknown key' errors)."""
    model: type[BaseModel] = Policy
    for part in parent:
        if isinstance(part, int):
            continue
        for name, info in model.model_fields.items():
            if part in (name, info.alias):
                annotation = info.annotation
                candidates = [annotation, *getattr(annotation, "__args__", ())]
                for candidate in candidates:
                    inner = getattr(candidate, "__args__", (candidate,))
                    found = [c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)]
                    if found:
                        model = found[0]
                        break
    return [info.alias or name for name, info in model.model_fields.items()]
