"""C-STORE throughput of MIMIC beside its peers, in one run: dcmtk storescp, Orthanc (SQLite
index, PostgreSQL index plugin) and MIMIC (embedded; PostgreSQL + file store; PostgreSQL +
Azurite).

The same files (``store_throughput``'s ~40 KB CT slices and ~0.5 MB CT images) are sent by
dcmtk ``storescu`` (``TCP_NODELAY=1``) over 1 and 4 associations, with TLS (mutual, the
development PKI made by ``mimic certs init``, for every receiver) and plain. Each run gets a
fresh receiver (its own directory, PostgreSQL database, Azurite); the receiver's instance
count is verified after every run (storescp: files; Orthanc: REST ``/statistics``; MIMIC:
rows of ``instances``), and a mismatch fails the benchmark.

Rounds are interleaved: each round runs every scenario once on every receiver, the order of
the receivers rotating from round to round, so a drift of the machine's speed touches them
all alike. The best round of each receiver and scenario is reported, and the ratios
of the median rounds beside the best rounds' (this VM's speed moves by up to 3x between
rounds: the medians hold less luck).

    .venv/bin/python bench/compare.py [--rounds 5] [--quick] [--write-docs]

``MIMIC_*`` variables in the environment that do not choose the configuration (for instance
``MIMIC_WORKERS``) pass through to every MIMIC server. Results go to
``bench/results/compare.json``; ``--write-docs`` rewrites the marked section of
docs/benchmarks.md and the chart docs/benchmarks-compare.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import receivers
from bench.latency import database_cpu, database_cpu_delta, machine_cpu
from bench.store_throughput import (
    PARALLEL,
    ROOT,
    BenchError,
    DataSet,
    Pki,
    SenderFailed,
    machine,
    make_large,
    make_pki,
    make_small,
    send,
    tail,
    terminated_as_exit,
)

RESULTS = ROOT / "bench" / "results" / "compare.json"
DOCS = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks-compare.png"
BEGIN = "<!-- compare.py: begin (rewritten by bench/compare.py --write-docs) -->"
END = "<!-- compare.py: end -->"
COMMAND = ".venv/bin/python bench/compare.py --rounds 5 --write-docs"

NAMES = {
    "storescp": "dcmtk storescp (files only, no index, no fsync)",
    "orthanc-sqlite": "Orthanc, SQLite index",
    "orthanc-pg": "Orthanc + PostgreSQL index plugin",
    "mimic-embedded": "MIMIC, embedded default",
    "mimic-pg-files": "MIMIC, PostgreSQL + file store",
    "mimic-pg-azurite": "MIMIC, PostgreSQL + Azurite",
}


@dataclass(frozen=True)
class Scenario:
    data: str
    associations: int
    tls: bool

    @property
    def key(self) -> str:
        return f"{self.data}-{self.associations}-{'tls' if self.tls else 'plain'}"

    @property
    def column(self) -> str:
        return f"{self.data}, {self.associations} assoc"


@dataclass
class Runs:
    """Every run of one receiver in one scenario (seconds); the best is the figure."""

    receiver: str
    scenario: str
    instances: int
    bytes: int
    seconds: list[float] = field(default_factory=list)
    #: The receiver's CPU seconds (user + system, every process of it) during each run.
    cpu_seconds: list[float] = field(default_factory=list)
    #: And, during the same transfer: the PostgreSQL cluster's processes, the senders
    #: (``storescu``), and the whole machine's busy seconds (every process, the kernel's
    #: network and disk work included).
    database_cpu_seconds: list[float] = field(default_factory=list)
    sender_cpu_seconds: list[float] = field(default_factory=list)
    machine_busy_seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.best

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.best / 1e6


def available_receivers(wanted: list[str], postgres: str) -> tuple[list[str], list[str]]:
    """The receivers that can run here, and why the others cannot."""
    notes = []
    usable = []
    for label in wanted:
        reason = None
        if label.startswith("orthanc"):
            reason = receivers.orthanc_missing()
        if reason is None and label in ("orthanc-pg", "mimic-pg-files", "mimic-pg-azurite"):
            try:
                with psycopg.connect(postgres, connect_timeout=5):
                    pass
            except psycopg.Error as exc:
                reason = f"PostgreSQL at {postgres} not reachable ({exc.__class__.__name__})"
        if reason is None and label == "mimic-pg-azurite":
            reason = receivers.azurite_missing()
        if reason is None:
            usable.append(label)
        else:
            notes.append(f"{label}: skipped, {reason}")
    return usable, notes


def run(
    *, rounds: int, small: int, large: int, labels: list[str], postgres: str,
    tls_modes: tuple[bool, ...] = (True, False), associations: tuple[int, ...] = (1, PARALLEL),
    log: bool = True,
) -> dict[str, object]:
    """Synthesize the data, run the rounds; return the results (also what goes to JSON)."""
    with tempfile.TemporaryDirectory(prefix="mimic-compare-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        sets: dict[str, DataSet] = {}
        if small:
            sets["small"] = make_small(work / "in" / "small", small)
        if large:
            sets["large"] = make_large(work / "in" / "large", large)
        if log:
            for d in sets.values():
                print(f"{d.name}: {d.count} files, {d.total_bytes / 1e6:.1f} MB "
                      f"({d.total_bytes / d.count / 1e3:.1f} KB each)", flush=True)
            print(f"synthesized in {time.monotonic() - t0:.1f} s", flush=True)
        pki = make_pki(work / "pki")
        scenarios = [Scenario(name, n, tls) for tls in tls_modes for name in sets
                     for n in associations]
        results: dict[tuple[str, str], Runs] = {}
        retried: list[str] = []
        before = machine()
        commit = git_commit()
        started = time.monotonic()
        try:
            rounds_run(rounds, labels, scenarios, sets, pki, postgres, work, results, log,
                       retried)
        finally:
            receivers.shutdown()
        info: dict[str, object] = {
            "machine": before,
            "loadavg_at_end": machine()["loadavg_1_5_15"],
            "orthanc": receivers.orthanc_version() if "orthanc-sqlite" in labels
            or "orthanc-pg" in labels else "",
            "mimic_commit": commit,
            "mimic_environment": {k: v for k, v in os.environ.items()
                                  if k.startswith("MIMIC_")},
            "rounds": rounds,
            "retried": retried,
            "minutes": round((time.monotonic() - started) / 60, 1),
            "data": {d.name: {"count": d.count, "bytes": d.total_bytes}
                     for d in sets.values()},
            "receivers": labels,
            "scenarios": [{"key": s.key, "data": s.data, "associations": s.associations,
                           "tls": s.tls} for s in scenarios],
            "runs": [{**asdict(v), "instances_per_s": round(v.instances_per_s, 1),
                      "mb_per_s": round(v.mb_per_s, 2)} for v in results.values()],
        }
        return info


def rounds_run(
    rounds: int, labels: list[str], scenarios: list[Scenario], sets: dict[str, DataSet],
    pki: Pki, postgres: str, work: Path, results: dict[tuple[str, str], Runs], log: bool,
    retried: list[str] | None = None,
) -> None:
    """Every round: every scenario on every receiver, the receivers' order rotating; a run
    whose sender failed is run once more, and noted in ``retried``."""
    retried = [] if retried is None else retried
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for sc in scenarios:
            data = sets[sc.data]
            for label in order:
                server = receivers.make_receiver(
                    label, work / "run" / f"{label}-{sc.key}-{r}",
                    pki if sc.tls else None, postgres,
                )
                used = Used()
                try:
                    seconds, cpu = measure_once(server, data, sc.associations, work, used)
                except SenderFailed as exc:
                    # One retry with a fresh receiver, recorded: a sender that fails once in
                    # a few hundred runs (seen with Orthanc + PostgreSQL: storescu exited 167,
                    # nothing in its log) must not throw away the whole benchmark; a second
                    # failure, or any count mismatch, still ends it.
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    retried.append(f"round {r + 1}, {sc.key}, {label}: {first}; run again")
                    if log:
                        print(f"round {r + 1}/{rounds} {sc.key:16} {label:17} failed "
                              f"({first}); once more with a fresh receiver", flush=True)
                    server = receivers.make_receiver(
                        label, work / "run" / f"{label}-{sc.key}-{r}-again",
                        pki if sc.tls else None, postgres,
                    )
                    used = Used()
                    seconds, cpu = measure_once(server, data, sc.associations, work, used)
                runs = results.setdefault(
                    (label, sc.key), Runs(label, sc.key, data.count, data.total_bytes))
                runs.seconds.append(round(seconds, 3))
                runs.cpu_seconds.append(round(cpu, 3))
                runs.database_cpu_seconds.append(round(used.database, 3))
                runs.sender_cpu_seconds.append(round(used.senders, 3))
                runs.machine_busy_seconds.append(round(used.machine, 3))
                if log:
                    print(f"round {r + 1}/{rounds} {sc.key:16} {label:17} "
                          f"{data.count / seconds:8.1f} inst/s  ({seconds:.2f} s, server CPU "
                          f"{1000 * cpu / data.count:.2f} ms/object)", flush=True)


@dataclass
class Used:
    """CPU seconds spent during one transfer beside the receiver's own (``Runs``)."""

    database: float = 0.0
    senders: float = 0.0
    machine: float = 0.0


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def measure_once(
    server: receivers.Server, data: DataSet, associations: int, work: Path,
    used: Used | None = None,
) -> tuple[float, float]:
    """One fresh receiver, one transfer; the count is checked before the figure is kept.
    Returns (wall seconds, the receiver's CPU seconds during the transfer); ``used`` gets
    what the database, the senders and the whole machine spent meanwhile."""
    try:
        server.start()
        assert server.proc is not None
        cpu_before = tree_cpu_seconds(server.proc.pid)
        database_before, senders_before = database_cpu(None), _children_cpu()
        machine_before = machine_cpu()[0]
        seconds = send(server, data, associations, work)
        cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
        if used is not None:
            used.machine = machine_cpu()[0] - machine_before
            used.senders = _children_cpu() - senders_before  # storescu, reaped by send()
            used.database = database_cpu_delta(database_before, database_cpu(None))
        stored = server.count()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(server.workdir, ignore_errors=True)
    if stored != data.count:
        raise BenchError(f"{server.label} holds {stored} instances, {data.count} were sent "
                         f"({data.name}, {associations} assoc); its log:\n{tail(server.log_path)}")
    return seconds, cpu


def _processes() -> dict[int, tuple[int, float]]:
    """Every living process: its parent and its user + system CPU seconds, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def _descendants(pid: int, table: dict[int, tuple[int, float]]) -> set[int]:
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _) in table.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def process_tree(pid: int) -> set[int]:
    """``pid`` and its living descendants (MIMIC's worker processes), from /proc."""
    return _descendants(pid, _processes())


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its living descendants (MIMIC's workers),
    from /proc; 0 where /proc cannot be read. A worker that exits during the transfer loses
    its seconds: the figure is a floor."""
    table = _processes()
    return sum(table[p][1] for p in _descendants(pid, table) if p in table)


def git_commit() -> str:
    """HEAD when the run starts, ``+changes`` when MIMIC's code differs from it."""
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10, check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "mimic_server"],
                           capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip() + (" +changes" if dirty.stdout.strip() else "")


# -- reporting --------------------------------------------------------------------------------


def figures(result: dict[str, object]) -> dict[tuple[str, str], float]:
    return {(r["receiver"], r["scenario"]): r["instances_per_s"]  # type: ignore[index]
            for r in result["runs"]}  # type: ignore[attr-defined]


def median_figures(result: dict[str, object]) -> dict[tuple[str, str], float]:
    """Instances/s of each receiver's median round: a figure with less of this VM's luck in
    it than the best round (its speed moves by up to 3x between the rounds of one run)."""
    return {(r["receiver"], r["scenario"]):  # type: ignore[index]
            r["instances"] / statistics.median(r["seconds"])  # type: ignore[index]
            for r in result["runs"]}  # type: ignore[attr-defined]


def markdown(result: dict[str, object]) -> str:
    """The tables: inst/s per receiver and scenario (TLS, plain), then the target ratios."""
    fig = figures(result)
    scenarios = [Scenario(s["data"], s["associations"], s["tls"])  # type: ignore[index]
                 for s in result["scenarios"]]  # type: ignore[attr-defined]
    labels: list[str] = result["receivers"]  # type: ignore[assignment]
    lines: list[str] = []
    for tls in (True, False):
        cols = [s for s in scenarios if s.tls == tls]
        if not cols:
            continue
        lines.append(f"**{'TLS (mutual)' if tls else 'plain TCP'}**, instances/s, best of "
                     f"{plural(result['rounds'], 'round')}:")
        lines.append("")
        lines.append("| receiver | " + " | ".join(s.column for s in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for label in labels:
            cells = [f"{fig[(label, s.key)]:.1f}" if (label, s.key) in fig else "—"
                     for s in cols]
            lines.append(f"| {NAMES[label]} | " + " | ".join(cells) + " |")
        lines.append("")
    pairs = [("mimic-pg-files", "orthanc-pg", ">= 1.5 (all four)"),
             ("mimic-embedded", "orthanc-sqlite", ">= 1.0 with 4 assoc"),
             ("mimic-pg-azurite", "orthanc-pg", "—")]
    pairs = [p for p in pairs if p[0] in labels and p[1] in labels]
    medians = median_figures(result)
    for title, values in (("Ratios (MIMIC / Orthanc, instances/s, same run):", fig),
                          ("The same ratios of the median rounds (instances / the median "
                           "seconds of the rounds; less luck than the best):", medians)):
        if not pairs:
            break
        lines.append(title)
        lines.append("")
        lines.append("| ratio | transport | " + " | ".join(
            s.column for s in scenarios if s.tls == scenarios[0].tls) + " | target |")
        lines.append("|---|---|" + "---:|" * (len({s.column for s in scenarios}) + 1))
        for mine, theirs, target in pairs:
            for tls in (True, False):
                cols = [s for s in scenarios if s.tls == tls]
                if not cols:
                    continue
                cells = []
                for s in cols:
                    a, b = values.get((mine, s.key)), values.get((theirs, s.key))
                    cells.append(f"{a / b:.2f}" if a and b else "—")
                lines.append(f"| {NAMES[mine]} / {NAMES[theirs]} | "
                             f"{'TLS' if tls else 'plain'} | " + " | ".join(cells)
                             + f" | {target} |")
        lines.append("")
    lines.extend(cpu_table(result, scenarios, labels))
    lines.extend(tls_cost_table(labels, scenarios, fig, medians))
    lines.extend(tls_cpu_table(result, scenarios, labels))
    return "\n".join(lines)


def tls_cost_table(labels: list[str], scenarios: list[Scenario],
                   best: dict[tuple[str, str], float],
                   medians: dict[tuple[str, str], float]) -> list[str]:
    """What TLS costs each receiver: plain TCP over TLS - 1, best / median rounds. The
    target is MIMIC embedded's; the peers' rows show what TLS costs the same senders on the
    same cores (the senders encrypt on the machine that decrypts)."""
    cols = [s for s in scenarios if s.tls]
    rows = []
    for label in labels:
        cells = []
        for s in cols:
            plain = Scenario(s.data, s.associations, False).key
            pair = []
            for values in (best, medians):
                a, b = values.get((label, s.key)), values.get((label, plain))
                pair.append(f"{(b / a - 1) * 100:+.0f} %" if a and b else "—")
            cells.append(" / ".join(pair))
        if any(c != "— / —" for c in cells):
            target = " (target <= 10 %)" if label == "mimic-embedded" else ""
            rows.append(f"| {NAMES[label]}{target} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "TLS cost per receiver (plain TCP / TLS - 1), best / median rounds:",
        "",
        "| receiver | " + " | ".join(s.column for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
        *rows,
        "",
    ]


def median_cpu_per_object(run: dict[str, object], key: str) -> float | None:
    """Milliseconds of CPU per object of one part of the machine (``key``: a list of per-round
    seconds in ``run``), the median of the rounds; None for a result saved without it."""
    seconds: list[float] | None = run.get(key)  # type: ignore[assignment]
    if not seconds:
        return None
    return 1000 * statistics.median(seconds) / run["instances"]  # type: ignore[operator]


def tls_cpu_table(result: dict[str, object], scenarios: list[Scenario],
                  labels: list[str]) -> list[str]:
    """What TLS costs in CPU per object, TLS against plain TCP, medians of the rounds: the
    receiver's own processes, and the senders that encrypt beside it. Unlike the throughput
    (plain TCP / TLS - 1 above), where the senders' encryption and the VM's drift between
    rounds show as the receiver's, this is the work TLS adds to each side."""
    runs = {(r["receiver"], r["scenario"]): r for r in result["runs"]}  # type: ignore[attr-defined]
    cols = [s for s in scenarios if s.tls]

    def cell(label: str, s: Scenario, key: str) -> str:
        tls, plain = runs.get((label, s.key)), runs.get(
            (label, Scenario(s.data, s.associations, False).key))
        if tls is None or plain is None:
            return "—"
        a, b = median_cpu_per_object(tls, key), median_cpu_per_object(plain, key)
        if not a or not b:
            return "—"
        return f"{(a / b - 1) * 100:+.0f} % ({a:.2f} / {b:.2f})"

    rows = []
    for label in labels:
        cells = [cell(label, s, "cpu_seconds") for s in cols]
        if any(c != "—" for c in cells):
            target = " (target <= 10 %)" if label == "mimic-embedded" else ""
            rows.append(f"| {NAMES[label]}{target} | " + " | ".join(cells) + " |")
    for label in labels:
        cells = [cell(label, s, "sender_cpu_seconds") for s in cols]
        if any(c != "—" for c in cells):
            rows.append(f"| the senders (`storescu`), to {NAMES[label]} | "
                        + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "TLS cost in CPU per object (TLS / plain TCP - 1; in brackets ms per object, TLS / "
        "plain; medians of the rounds): each receiver's own processes, then the senders "
        "that encrypt on the same cores:",
        "",
        "| processes | " + " | ".join(s.column for s in cols) + " |",
        "|---|" + "---:|" * len(cols),
        *rows,
        "",
    ]


def cpu_table(result: dict[str, object], scenarios: list[Scenario],
              labels: list[str]) -> list[str]:
    """Where the machine's CPU went in each receiver's best round of the scenarios with the
    most associations over TLS (plain TCP when there is no TLS): ms per object of the
    receiver, the PostgreSQL cluster, the senders and the whole machine."""
    runs = {(r["receiver"], r["scenario"]): r for r in result["runs"]}  # type: ignore[attr-defined]
    tls = any(s.tls for s in scenarios)
    most = max((s.associations for s in scenarios), default=0)
    cols = [s for s in scenarios if s.tls == tls and s.associations == most]
    if not cols or any("machine_busy_seconds" not in r for r in runs.values()):
        return []  # a result saved before these were measured
    lines = [f"CPU per object in each receiver's best round, {most} associations over "
             f"{'TLS' if tls else 'plain TCP'}, ms: the receiver / the PostgreSQL cluster / "
             "the senders (`storescu`) / the whole machine (the kernel's network and disk "
             "work, Azurite and anything else running included):", "",
             "| receiver | " + " | ".join(s.column for s in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for label in labels:
        cells = []
        for s in cols:
            run = runs.get((label, s.key))
            if run is None:
                cells.append("—")
                continue
            best = run["seconds"].index(min(run["seconds"]))
            per = [1000 * run[k][best] / run["instances"] for k in (
                "cpu_seconds", "database_cpu_seconds", "sender_cpu_seconds",
                "machine_busy_seconds")]
            cells.append(" / ".join(f"{x:.1f}" for x in per))
        lines.append(f"| {NAMES[label]} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def chart(result: dict[str, object], path: Path) -> None:
    """Grouped bars: one group per scenario, one bar per receiver (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_values = figures(result)
    scenarios = [Scenario(s["data"], s["associations"], s["tls"])  # type: ignore[index]
                 for s in result["scenarios"]]  # type: ignore[attr-defined]
    labels: list[str] = result["receivers"]  # type: ignore[assignment]
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for i, label in enumerate(labels):
        xs = [n + (i - (len(labels) - 1) / 2) * width for n in range(len(scenarios))]
        ys = [fig_values.get((label, s.key), 0.0) for s in scenarios]
        ax.bar(xs, ys, width, label=NAMES[label])
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([f"{s.column}\n{'TLS' if s.tls else 'plain'}" for s in scenarios])
    ax.set_ylabel("instances / s (best of rounds)")
    machine_info: dict[str, object] = result["machine"]  # type: ignore[assignment]
    ax.set_title(f"C-STORE throughput, dcmtk storescu -> receiver, "
                 f"{machine_info['date_utc']}, {machine_info['nproc']} CPUs")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plural(n: object, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def section(result: dict[str, object], notes: list[str]) -> str:
    m: dict[str, object] = result["machine"]  # type: ignore[assignment]
    data: dict[str, dict[str, int]] = result["data"]  # type: ignore[assignment]
    sizes = ", ".join(f"{name} {d['count']} x {d['bytes'] / d['count'] / 1e3:.0f} KB"
                      for name, d in data.items())
    env = result["mimic_environment"] or {}
    parts = [
        BEGIN,
        "",
        f"Run {m['date_utc']}, commit `{result['mimic_commit']}`, "
        f"{plural(result['rounds'], 'round')} ({result['minutes']} min), {sizes}; "
        f"{m['nproc']} CPUs ({m['cpu']}), load average {m['loadavg_1_5_15']} at the start and "
        f"{result['loadavg_at_end']} at the end; {str(m['dcmtk']).strip('$ ')}; "
        f"{result['orthanc'] or 'Orthanc not run'}; Python {m['python']}, "
        f"pynetdicom {m['pynetdicom']}"
        + (f"; MIMIC environment {env}" if env else "") + ".",
        "",
        *([f"- {n}" for n in notes] + [""] if notes else []),
        markdown(result),
        "![C-STORE throughput per receiver](benchmarks-compare.png)",
        "",
        END,
    ]
    return "\n".join(parts)


def write_docs(result: dict[str, object], notes: list[str]) -> None:
    chart(result, CHART)
    text = DOCS.read_text()
    new = section(result, notes)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail_text = rest.split(END, 1)
        text = head + new + tail_text
    else:
        text = text.rstrip("\n") + "\n\n" + new + "\n"
    DOCS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    parser.add_argument("--quick", action="store_true", help="100 small / 40 large objects")
    parser.add_argument("--small", type=int, help="small objects (default 960; quick 100)")
    parser.add_argument("--large", type=int, help="large objects (default 400; quick 40)")
    parser.add_argument("--receivers", default=",".join(receivers.RECEIVERS),
                        help="comma-separated subset of " + ", ".join(receivers.RECEIVERS))
    parser.add_argument("--plain-only", action="store_true", help="no TLS scenarios")
    parser.add_argument("--tls-only", action="store_true", help="no plain scenarios")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES,
                        help="PostgreSQL server (a database is created per run)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the marked section of docs/benchmarks.md and the chart")
    parser.add_argument("--from-json", type=Path,
                        help="no run: report (and with --write-docs write) a saved result")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(markdown(saved))
        if args.write_docs:
            write_docs(saved, saved.get("notes", []))
        return 0
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} (dcmtk) is not installed: sudo apt-get install -y dcmtk",
                  file=sys.stderr)
            return 2
    small = args.small if args.small is not None else (100 if args.quick else 960)
    large = args.large if args.large is not None else (40 if args.quick else 400)
    wanted = [x.strip() for x in args.receivers.split(",") if x.strip()]
    unknown = set(wanted) - set(receivers.RECEIVERS)
    if unknown:
        parser.error(f"unknown receivers: {', '.join(sorted(unknown))}")
    labels, notes = available_receivers(wanted, args.postgres)
    for note in notes:
        print(note, file=sys.stderr)
    tls_modes = (False,) if args.plain_only else (True,) if args.tls_only else (True, False)
    with terminated_as_exit():
        try:
            result = run(rounds=max(1, args.rounds), small=small, large=large, labels=labels,
                         postgres=args.postgres, tls_modes=tls_modes)
        except BenchError as exc:
            print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
            return 1
    result["command"] = " ".join([".venv/bin/python", "bench/compare.py", *sys.argv[1:]])
    notes = notes + [f"Retried once (the sender failed): {entry}."
                     for entry in result.get("retried", [])]  # type: ignore[union-attr]
    result["notes"] = notes
    print()
    print(markdown(result))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.output}")
    if args.write_docs:
        write_docs(result, notes)
        print(f"written to {DOCS} and {CHART}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
