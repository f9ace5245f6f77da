"""``bench/profile_machine.py``: the machine's CPU per object by part and shared object, read
from ``perf``'s output; and one small run of the real thing (``perf record -a``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import fresh_fs
from bench import profile_machine as pm

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """\
swapper     0     500000
\tffffffff8225f8ab pv_native_safe_halt ([kernel.kallsyms])
\tffffffff822613b5 default_idle ([kernel.kallsyms])

python3.11   700     500000
\t7f7b00000000 _PyEval_EvalFrameDefault (/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0)

python3.11   700     500000
\tffffffff81000000 recently_deleted ([kernel.kallsyms])
\tffffffff81000100 __ext4_new_inode ([kernel.kallsyms])
\tffffffff81000200 ext4_create ([kernel.kallsyms])
\tffffffff81000300 ext4_create ([kernel.kallsyms])
\t7f7b00000500 __libc_open64 (/usr/lib/x86_64-linux-gnu/libc.so.6)

python3.11   701    1000000
\t7f7b00000001 [unknown] (/usr/lib/x86_64-linux-gnu/libcrypto.so.3)

postgres   900     500000
\t55aa00000000 ExecInsert (/usr/lib/postgresql/15/bin/postgres)
\tffffffff81000200 ext4_create ([kernel.kallsyms])

storescu   950     250000
\t7f0000000000 [unknown] (/usr/lib/x86_64-linux-gnu/libdcmdata.so.17)

python3.11   960     250000
\t7f7b00000002 _PyEval_EvalFrameDefault (/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0)
"""


def test_samples_are_summed_by_part_shared_object_and_kernel_function() -> None:
    prof = pm.parse_script(SCRIPT, receiver_pids={700, 701})
    assert prof.by_part["receiver"] == {"libpython3.11.so.1.0": 500_000,
                                        "[kernel.kallsyms]": 500_000,
                                        "libcrypto.so.3": 1_000_000}
    assert prof.by_part["postgresql"] == {"postgres": 500_000}
    assert prof.by_part["senders"] == {"libdcmdata.so.17": 250_000}
    assert prof.by_part["other"] == {"libpython3.11.so.1.0": 250_000}  # not the receiver
    assert prof.by_part["idle"] == {"[kernel.kallsyms]": 500_000}
    # Inclusive, the receiver's only, each function once per sample (recursion).
    assert prof.receiver_kernel == {"recently_deleted": 500_000, "__ext4_new_inode": 500_000,
                                    "ext4_create": 500_000}
    lines = pm.report_lines(prof, count=2, top=5)
    assert lines[0] == "receiver       1.00 ms/object"  # 2 ms of samples, 2 objects
    assert "      0.50  libcrypto.so.3" in lines
    assert "      0.25  ext4_create" in lines


@pytest.mark.parametrize("fresh", [False, True], ids=["work-directory", "fresh-fs"])
def test_a_small_run_profiles_the_whole_machine(tmp_path: Path, fresh: bool) -> None:
    if fresh and (why := fresh_fs.unavailable()) is not None:
        pytest.skip(why)
    done = subprocess.run(
        [sys.executable, "bench/profile_machine.py", "--receiver", "mimic-embedded",
         "--count", "8", "--associations", "1", "--results", str(tmp_path),
         *(["--fresh-fs"] if fresh else [])],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mimic-embedded, small, 1 assoc, TLS: 8 objects" in done.stdout
    assert ("the receiver on a fresh file system" in done.stdout) is fresh
    summary = json.loads((tmp_path / "profile_machine.json").read_text())
    assert summary["count"] == 8 and summary["fresh_fs"] is fresh
    receiver = summary["ms_per_object"]["receiver"]
    assert receiver and "libpython3.11.so.1.0" in receiver  # the server's own Python, seen
    assert summary["receiver_kernel_ms_per_object"]  # its system calls, with their chains
    assert (tmp_path / "profile_machine.data").stat().st_size > 0
