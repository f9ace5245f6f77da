"""Several worker processes serving one DICOM port (``MIMIC_WORKERS``).

``supervisor`` is the parent ``mimic serve`` becomes when there are several workers; ``link``
is what a worker holds of it; ``table`` is the association count they share.
"""

from __future__ import annotations

import os

from mimic_server.config import Settings


def worker_count(settings: Settings) -> int:
    """``MIMIC_WORKERS``, else the CPUs this process may run on (a container's cpuset, not
    the host's count)."""
    if settings.workers is not None:
        return settings.workers
    return max(1, len(os.sched_getaffinity(0)))
