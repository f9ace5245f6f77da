"""The idle-CPU benchmark still runs, with MIMIC's waits, with pynetdicom's own loops, and with
the waits but the association thread's 1 ms sleep (``acceptor-loop`` off).

What it checks is behaviour, never a timing threshold (figures belong to ``bench/`` runs and
docs/benchmarks.md): associations left idle for a few seconds are still open, then answer
C-ECHO and C-STORE with Success, and once released or aborted the server's association
threads end, in every mode.
"""

from __future__ import annotations

from bench import idle_cpu


def test_idle_cpu_benchmark_runs_in_every_mode() -> None:
    summary = idle_cpu.run(associations=3, idle=2.0, count=5, rounds=1)

    for mode in idle_cpu.MODES:
        [result] = summary[mode]["rounds"]
        assert result["still_open_after_idle"] == 3, (mode, result)
        assert result["statuses"] == [0] * 10, (mode, result)
        assert result["idle_cpu_percent"] >= 0, (mode, result)
        threads = result["threads"]
        assert threads["open"] >= threads["before"] + 2 * 3, (mode, threads)  # two per association
        assert threads["after_close"] == threads["before"], (mode, threads)
