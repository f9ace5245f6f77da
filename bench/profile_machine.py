"""Where the whole machine's CPU goes while one receiver takes C-STOREs: ``perf`` on every
process, per object.

``profile_store.py`` (py-spy) sees MIMIC's Python. What the kernel does on its behalf (file
creation, fsync, TCP), OpenSSL, the PostgreSQL backends, the senders and a peer's C++ code
are outside its view, and on a two-core machine they are half of what the comparison's
four-association runs spend. This starts one receiver of ``compare.py`` (any of them,
Orthanc included), runs ``perf record -a`` (every CPU, ``cpu-clock`` sampling, call chains)
while ``storescu`` sends N objects over M associations, and prints the CPU per object:

- by part: the receiver's processes, the PostgreSQL backends, the senders, the rest (not
  the idle CPUs: a halted CPU takes few timer samples);
- by shared object within each part (``libpython3.11``, ``libcrypto``, the kernel...);
- the kernel functions in the call chains of the receiver's samples, inclusive
  (``ext4_create``, ``__x64_sys_fsync``, ``tcp_recvmsg``...).

    .venv/bin/python bench/profile_machine.py --receiver mimic-embedded --kind large \\
        --associations 4 --count 400

``perf`` comes with Debian's ``linux-perf``; sampling every CPU needs root (or
``kernel.perf_event_paranoid`` at 0 or below). The samples are written beside the other
results (``bench/results/profile_machine.data``, for ``perf report``) with a JSON summary.

Each run removes its temporary directory at its end. On ext4 without a journal (this VM's)
a new file does not get an inode freed in the last 5 minutes, and the search for a free one
scans past them: a run soon after another pays for the files it removed, in
``ext4_create`` -> ``find_inode_bit`` -> ``recently_deleted`` (docs/benchmarks.md, "Where
the whole machine's CPU goes"). The kernel functions listed show it where it happens.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import receivers
from bench.fresh_fs import fresh_filesystem
from bench.fresh_fs import unavailable as fresh_fs_unavailable
from bench.profile_store import sampled_send
from bench.store_throughput import ROOT, make_large, make_pki, make_small

RESULTS = ROOT / "bench" / "results"
#: A sample's first line in ``perf script -F comm,pid,period,ip,sym,dso``: the command, the
#: process, the nanoseconds of CPU it stands for; its call chain follows, a frame a line.
_HEADER = re.compile(r"^(?P<comm>\S.*?)\s+(?P<pid>\d+)\s+(?P<period>\d+)\s*$")
#: A frame: the address, the function (or ``[unknown]``), the shared object.
_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
_KERNEL = "[kernel.kallsyms]"


@dataclass
class Profile:
    """CPU nanoseconds by part and shared object (where each sample was taken), and by
    kernel function anywhere in the call chains of the receiver's samples (inclusive)."""

    by_part: dict[str, collections.Counter[str]] = field(default_factory=dict)
    receiver_kernel: collections.Counter[str] = field(default_factory=collections.Counter)

    def part_total(self, part: str) -> int:
        return sum(self.by_part.get(part, collections.Counter()).values())


def part_of(comm: str, pid: int, receiver_pids: set[int]) -> str:
    if pid in receiver_pids:
        return "receiver"
    if comm == "postgres":
        return "postgresql"
    if comm == "storescu":
        return "senders"
    if pid == 0:
        return "idle"
    return "other"


def parse_script(script: str, receiver_pids: set[int]) -> Profile:
    """Sum the samples of ``perf script`` (with call chains) by part and shared object, and
    the receiver's by kernel function."""
    prof = Profile()
    sample: tuple[str, int] | None = None  # (part, period) of the sample being read
    leaf = True
    seen: set[str] = set()
    for line in script.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            sample = (part_of(header["comm"], int(header["pid"]), receiver_pids),
                      int(header["period"]))
            leaf, seen = True, set()
            continue
        frame = _FRAME.match(line)
        if frame is None or sample is None:
            continue
        part, period = sample
        dso = frame["dso"]
        if leaf:
            name = Path(dso).name if dso.startswith("/") else dso
            prof.by_part.setdefault(part, collections.Counter())[name] += period
            leaf = False
        if (part == "receiver" and dso == _KERNEL and frame["sym"] not in seen
                and not frame["sym"].startswith("0x")):
            seen.add(frame["sym"])
            prof.receiver_kernel[frame["sym"]] += period
    return prof


def profile(data: Path, receiver_pids: set[int]) -> Profile:
    script = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,pid,period,ip,sym,dso"],
        capture_output=True, text=True, check=True).stdout
    return parse_script(script, receiver_pids)


def report_lines(prof: Profile, count: int, top: int) -> list[str]:
    """Milliseconds of CPU per object, by part and shared object; the receiver's kernel
    functions (inclusive, system calls and the work under them)."""
    ms = 1e6 * count
    lines = []
    for part in ("receiver", "postgresql", "senders", "other"):
        total = prof.part_total(part)
        if not total:
            continue
        lines.append(f"{part:12} {total / ms:6.2f} ms/object")
        for dso, ns in prof.by_part[part].most_common(top):
            if ns / ms >= 0.01:
                lines.append(f"    {ns / ms:6.2f}  {dso}")
    if prof.receiver_kernel:
        lines.append("the receiver's kernel functions, inclusive, ms/object:")
        lines += [f"    {ns / ms:6.2f}  {sym}"
                  for sym, ns in prof.receiver_kernel.most_common(top)]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--receiver", default="mimic-embedded", choices=receivers.RECEIVERS)
    parser.add_argument("--kind", choices=("small", "large"), default="small")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--count", type=int, default=960, help="objects sent")
    parser.add_argument("--plain", action="store_true", help="plain TCP (default: TLS)")
    parser.add_argument("--frequency", type=int, default=999, help="samples per second per CPU")
    parser.add_argument("--postgres", default=receivers.DEFAULT_POSTGRES)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the samples and the JSON summary go")
    parser.add_argument("--fresh-fs", action="store_true",
                        help="the receiver on an ext4 file system made for the run (root; "
                        "see bench/fresh_fs.py)")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        print("perf is missing: sudo apt-get install -y linux-perf", file=sys.stderr)
        return 2
    if args.fresh_fs and (why := fresh_fs_unavailable()) is not None:
        print(f"--fresh-fs: {why}", file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    data_path = args.results / "profile_machine.data"
    with tempfile.TemporaryDirectory(prefix="mimic-profile-machine-") as tmp:
        work = Path(tmp)
        make = make_small if args.kind == "small" else make_large
        data = make(work / "in", args.count - args.count % 4)
        pki = None if args.plain else make_pki(work / "pki")
        workdir = work / "run" / "server"
        with (fresh_filesystem(workdir) if args.fresh_fs
              else contextlib.nullcontext(workdir)):
            server = receivers.make_receiver(args.receiver, workdir, pki, args.postgres)
            seconds, receiver_pids = sampled_send(
                server, data, args.associations, work, warm_up=1.0,  # perf is sampling
                sampler=lambda _pid: ["perf", "record", "-a", "-g", "-F", str(args.frequency),
                                      "-o", str(data_path)])
    prof = profile(data_path, receiver_pids)
    lines = report_lines(prof, data.count, args.top)
    print(f"{args.receiver}, {args.kind}, {args.associations} assoc, "
          f"{'plain' if args.plain else 'TLS'}: {data.count} objects in {seconds:.2f} s "
          f"({data.count / seconds:.1f} inst/s); CPU from 1 s before the send to its end"
          + ("; the receiver on a fresh file system" if args.fresh_fs else ""))
    print("\n".join(lines))
    summary = {
        "receiver": args.receiver, "kind": args.kind, "associations": args.associations,
        "tls": not args.plain, "count": data.count, "seconds": round(seconds, 3),
        "fresh_fs": args.fresh_fs,
        # Idle CPUs are left out: a halted CPU takes few timer samples.
        "ms_per_object": {part: {dso: round(ns / 1e6 / data.count, 3)
                                 for dso, ns in dsos.most_common()}
                          for part, dsos in prof.by_part.items() if part != "idle"},
        "receiver_kernel_ms_per_object": {
            sym: round(ns / 1e6 / data.count, 3)
            for sym, ns in prof.receiver_kernel.most_common(args.top * 3)},
    }
    (args.results / "profile_machine.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
