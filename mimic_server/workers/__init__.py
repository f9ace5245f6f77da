"""Several worker processes serving one DICOM port (``MIMIC_WORKERS``).

``supervisor`` is the parent ``mimic serve`` becomes when there are several workers; ``link``
is what a worker holds of it; ``table`` is the association count they share.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mimic_server.config import Settings

#: cgroup v2, then v1: a container's CPU quota (Container Apps, Kubernetes limits), which
#: the CPU affinity does not show.
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
              Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def worker_count(settings: Settings) -> int:
    """``MIMIC_WORKERS``, else the CPUs this process may use: its CPU affinity, lowered to
    the container's CPU quota rounded up (1.5 vCPU: 2 workers)."""
    if settings.workers is not None:
        return settings.workers
    return cpus_available()


def cpus_available() -> int:
    """The CPUs this process may use: its affinity, lowered to the container's CPU quota
    rounded up. The default count of `mimic serve`'s and `mimic web`'s worker processes."""
    cpus = max(1, len(os.sched_getaffinity(0)))
    quota = cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else cpus


def cpu_quota(
    v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1
) -> float | None:
    """CPUs' worth of time the cgroup may use; None when unlimited or unknown."""
    try:
        limit, period = v2.read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        limit_us, period_us = (int(p.read_text()) for p in v1)
    except (OSError, ValueError):
        return None
    return limit_us / period_us if limit_us > 0 and period_us > 0 else None
