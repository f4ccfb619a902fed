"""The `--policy` file: loaded at startup (an invalid file stops startup with the key at fault) and re-read when
its contents change (a ConfigMap volume update); an invalid new version is logged and the previous policy kept."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import yaml

from webhook.policy.schema import Policy, PolicyError, parse_policy

log = logging.getLogger("policy")


def load_policy(path: str | Path) -> Policy:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    return parse_policy(data, str(path))


class PolicyFile:
    """Holds the current Policy; `refresh()` swaps it when the file changed and is valid."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.current = Policy()
        self._digest = ""
        if path:
            self.current = load_policy(path)
            self._digest = self._read_digest() or ""

    def _read_digest(self) -> str | None:
        if not self.path:
            return None
        try:
            return hashlib.sha256(Path(self.path).read_bytes()).hexdigest()
        except OSError:
            return None

    def refresh(self) -> bool:
        digest = self._read_digest()
        if digest is None or digest == self._digest:
            return False
        self._digest = digest
        try:
            self.current = load_policy(self.path or "")
        except PolicyError as exc:
            log.error("policy file changed but is invalid; keeping the previous policy", extra={"error": str(exc)})
            return False
        log.info("policy reloaded", extra={"path": self.path})
        return True
