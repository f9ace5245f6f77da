"""Polls the policy file (``MIMIC_POLICY_FILE``) and hands each new set of rules to the policy.

The pattern of :mod:`mimic_server.certs.watcher`: ``version()`` every period (the same
``MIMIC_CERT_REFRESH_SECONDS``), a full read only when it changed or on SIGHUP. A file that
cannot be read or parsed keeps the last good rules in force and is tried again every period,
with an ERROR line each time (loudly: an operator who broke the file must notice) and one
Security Alert per broken version. A change applies to associations admitted after it; open
associations keep the services they were admitted with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mimic_server.polling import Poller
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.grants import RuleError
from mimic_server.security.policy_file import PolicyFile, PolicyRules

log = logging.getLogger(__name__)

SECURITY_CONFIGURATION = "security-configuration"


class PolicyWatcher(Poller):
    def __init__(
        self,
        source: PolicyFile,
        period: float,
        apply: Callable[[PolicyRules], None],
        audit_log: AuditLog,
        version: str | None = None,
    ) -> None:
        """``version``: that of the rules the server was started with."""
        self.source = source
        super().__init__(period, "mimic-policy-watcher")
        self.apply = apply
        self.audit_log = audit_log
        self.failures = 0
        self._version = version
        self._failed_version: str | None = None

    def poll(self) -> bool:
        """Apply the file's rules if it changed; True if new rules were applied."""
        version = self.source.version()
        if version == self._version:
            return False
        try:
            rules = self.source.load()
        except RuleError as exc:
            self.failures += 1
            log.error(
                "access policy file cannot be used; the last good policy stays in force",
                extra={"file": self.source.describe(), "error": str(exc)},
            )
            if version != self._failed_version:
                self._failed_version = version
                self.audit_log.record(
                    audit.SECURITY_ALERT, audit.SERIOUS_FAILURE,
                    event_type=SECURITY_CONFIGURATION, reason=f"policy file refused: {exc}",
                )
            return False
        self.apply(rules)
        self._version, self._failed_version = version, None
        log.info("access policy loaded", extra={
            "file": self.source.describe(), "certificates": len(rules.certificates)})
        self.audit_log.record(
            audit.SECURITY_ALERT, audit.SUCCESS, event_type=SECURITY_CONFIGURATION,
            reason=f"policy file loaded ({len(rules.certificates)} certificate rules)",
        )
        return True
