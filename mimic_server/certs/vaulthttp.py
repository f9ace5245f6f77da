"""How the Key Vault clients talk HTTP: short timeouts and a bounded retry.

The SDK's defaults retry ten times and obey any ``Retry-After`` however long, so one throttled
refresh could hang for minutes. The watcher already keeps the last good trust set and tries
again next period, so here a refresh gives up quickly instead. The vault's HTTPS trust is the
standard ``REQUESTS_CA_BUNDLE`` (azure-core's requests transport honours it).
"""

from __future__ import annotations

from typing import Any

from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import RetryPolicy

#: Longest wait for one Retry-After; a longer one ends the refresh (the next period retries).
RETRY_AFTER_MAX = 5.0


class BoundedRetryPolicy(RetryPolicy):
    """``RetryPolicy`` whose Retry-After sleep is capped at :data:`RETRY_AFTER_MAX`.

    It overrides a private azure-core method; the fence checks that it is still there.
    """

    def _sleep_for_retry(self, response: PipelineResponse, transport: Any) -> bool:  # type: ignore[override]
        retry_after = self.get_retry_after(response)
        if retry_after:
            transport.sleep(min(retry_after, RETRY_AFTER_MAX))
            return True
        return False


#: The policy the clients get: :class:`BoundedRetryPolicy` while azure-core's
#: ``RetryPolicy._sleep_for_retry`` is the verified one; the fence (``mimic_server/patches.py``)
#: sets azure-core's own ``RetryPolicy`` when it is not.
retry_policy: type[RetryPolicy] = BoundedRetryPolicy


def client_options(verify_challenge_resource: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``CertificateClient`` and ``SecretClient``.

    ``verify_challenge_resource=False`` is for a Key Vault emulator on loopback only: it lets
    the client accept a challenge whose resource is not the vault's own domain.
    """
    return {
        "retry_policy": retry_policy(
            retry_total=2, retry_backoff_factor=0.5, retry_backoff_max=4, timeout=30
        ),
        "connection_timeout": 5,
        "read_timeout": 10,
        "verify_challenge_resource": verify_challenge_resource,
    }
