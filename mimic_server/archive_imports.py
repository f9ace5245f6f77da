"""What a process of ``mimic serve`` that serves DICOM (its single process, or each of its
workers) leaves out of its imports: numpy.

pydicom imports numpy, where it is installed, for its pixel data handlers as it is imported.
The archive's DICOM side never decodes pixels: it stores, indexes, answers and sends data
sets as they were received (no transcoding, conformance statement section 8). numpy is
installed for ``mimic web``, whose rendered images and frames need it, and pydicom takes it
as optional: marked unavailable before pydicom is imported, the handlers load without it
(``pydicom.config.have_numpy`` is False). That is a quarter of a worker's start (1.25 to
0.95 CPU-s on a 2-core Intel Xeon, ``bench/start_cost.py``) and 17 MB of its resident
memory, paid again by every worker of every start and by each replacement of a dead one.
"""

from __future__ import annotations

import sys


def leave_numpy_out() -> None:
    """Make ``import numpy`` fail in this process from now on, the import system's own way
    (``None`` in ``sys.modules``). Call it before anything imports pydicom; a process that
    has imported numpy already keeps it."""
    sys.modules.setdefault("numpy", None)  # type: ignore[arg-type]
