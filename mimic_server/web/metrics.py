"""The archive's Prometheus metrics, in one registry per archive.

Every label has a fixed set of values, named here: nothing a peer sends (AE titles, UIDs,
certificate names, error texts) ever becomes a label, so the number of series is bounded and
no patient data reaches a scrape. A registry of its own (not prometheus_client's global one)
lets a test run several archives in one process.

The recording methods are called on the DICOM hot path (every request and response): each
is a dictionary lookup and a lock-protected addition, a few microseconds.

Several worker processes (``MIMIC_WORKERS``): each worker's values go to prometheus_client's
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before a worker starts),
and the supervisor's ``/metrics`` adds them up (:class:`ServerMetrics`): counters and
histograms summed, gauges as their ``multiprocess_mode`` says. What a scrape would read through
a callback (open associations, refresh and audit failures, group commits) has no file to
live in: a worker writes it from the callback (:meth:`sample`) at each association event,
when asked by the supervisor's scrape (the worker's own ``/metrics``), and at its stop; not
on a timer, so an idle worker writes nothing. A worker killed outright loses what its
failure and commit counters grew by since then.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

#: Services counted, by their DIMSE names (the label values of ``service``).
SERVICES = ("C-ECHO", "C-STORE", "C-FIND", "C-MOVE", "C-GET")
#: Final statuses of a request, by category (the label values of ``status``).
STATUS_CATEGORIES = ("success", "warning", "failure", "cancel")
#: How an association ended, or that it was accepted or rejected (``outcome``).
OUTCOMES = ("accepted", "rejected", "aborted", "released")
#: Why a connection was refused before it became an association (``reason``).
HANDSHAKE_FAILURES = (
    "certificate_missing",  # the peer sent no client certificate
    "certificate_rejected",  # its certificate did not verify against the trusted set
    "certificate_untrusted",  # it verified, but is not (or no longer) in the trust set
    "protocol",  # no common TLS version or cipher, or not TLS at all
    "timeout",  # no complete handshake within MIMIC_HANDSHAKE_TIMEOUT
    "connection",  # the peer closed or reset the connection during the handshake
    "overloaded",  # too many connections waiting for their handshake
    "other",
)
ROLES = ("server", "client")
TRUSTED_CERTIFICATES = "mimic_trusted_certificates"
TRUSTED_CERTIFICATES_HELP = "Trusted client and CA certificates currently valid."
CERTIFICATE_NOT_AFTER = "mimic_certificate_not_after_timestamp_seconds"
CERTIFICATE_NOT_AFTER_HELP = (
    "Expiry (Unix time) of the server certificate, and the soonest of the trusted client "
    "and CA certificates."
)

#: Seconds; from a C-ECHO on loopback (sub-millisecond) to a long C-MOVE.
_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)


class _CallbackCounter(Collector):
    """A counter whose value another object already keeps (read at scrape time)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self._name, self._documentation, self._value = name, documentation, value

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._value())


class ArchiveMetrics:
    """The metrics of one archive; ``app.py`` feeds them, the ops endpoint exposes them."""

    def __init__(self, *, worker: bool = False) -> None:
        """``worker``: this is one of several worker processes (values go to the multiprocess
        files the supervisor reads; callbacks are sampled)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.multiprocess = worker and "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self._active_count: Callable[[], int] | None = None
        self._sampled: list[tuple[Counter, Callable[[], int], list[int]]] = []
        self._sampled_gauges: list[tuple[Gauge, Callable[[], int]]] = []
        self._sample_lock = threading.Lock()
        self._worker_accepted: Gauge | None = None
        self.associations_active = Gauge(
            "mimic_associations_active", "Associations established and not yet ended.",
            registry=r, multiprocess_mode="livesum",
        )
        self.associations = Counter(
            "mimic_associations", "Association requests accepted or rejected, and how "
            "associations ended.", ["outcome"], registry=r,
        )
        self.requests = Counter(
            "mimic_dimse_requests", "DIMSE requests answered, by service and final status.",
            ["service", "status"], registry=r,
        )
        self.duration = Histogram(
            "mimic_dimse_request_duration_seconds",
            "From a request received to its final response sent.", ["service"],
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.stored_bytes = Counter(
            "mimic_stored_bytes", "Data set bytes of C-STOREs answered Success or Warning.",
            registry=r,
        )
        self.handshake_failures = Counter(
            "mimic_tls_handshake_failures",
            "Connections refused before an association: TLS handshake or certificate.",
            ["reason"], registry=r,
        )
        self.handler_errors = Counter(
            "mimic_handler_errors",
            "Unexpected exceptions in MIMIC's DIMSE handlers (bugs; each is logged at ERROR).",
            ["service"], registry=r,
        )
        # Not in a worker either: a new worker's multiprocess file says 0 from its start until
        # its first bundle (seconds with PostgreSQL or Azure), and the server-wide minimum
        # said "nothing trusted" while a worker was replaced. A worker reports its count to
        # the supervisor with its dates; the supervisor exports the ready workers' least.
        self.trusted_certificates = None if self.multiprocess else Gauge(
            TRUSTED_CERTIFICATES, TRUSTED_CERTIFICATES_HELP, registry=r,
        )
        # Not in a worker: a series once written to a multiprocess file cannot be removed
        # (remove() only forgets it in this process), so the client expiry of a trust set
        # emptied since would stay. A worker reports its dates to the supervisor instead,
        # which exports them (ServerMetrics).
        self.certificate_not_after = None if self.multiprocess else Gauge(
            CERTIFICATE_NOT_AFTER, CERTIFICATE_NOT_AFTER_HELP, ["role"], registry=r,
        )
        # Children made now: every series exists from the start (0, not absent), and the
        # hot path finds its child with one dictionary lookup instead of labels().
        for outcome in OUTCOMES:
            self.associations.labels(outcome)
        self._requests = {
            (service, status): self.requests.labels(service, status)
            for service in SERVICES
            for status in STATUS_CATEGORIES
        }
        self._durations = {service: self.duration.labels(service) for service in SERVICES}
        for reason in HANDSHAKE_FAILURES:
            self.handshake_failures.labels(reason)
        for service in SERVICES:
            self.handler_errors.labels(service)

    # -- associations ------------------------------------------------------------------------

    def association(self, outcome: str) -> None:
        self.associations.labels(outcome).inc()
        if self.multiprocess:
            if outcome == "accepted" and self._worker_accepted is not None:
                self._worker_accepted.inc()
            if self._active_count is not None:
                self.associations_active.set(self._active_count())

    def active_associations_from(self, count: Callable[[], int]) -> None:
        """Read the number of open associations at scrape time (never drifts); in a worker,
        at each association event and each :meth:`sample`."""
        if self.multiprocess:
            self._active_count = count
        else:
            self.associations_active.set_function(count)

    def serve_as_worker(self, slot: int) -> None:
        """This archive is worker ``slot``: count its accepted associations on their own
        (``mimic_worker_associations_accepted{worker}``: which workers serve)."""
        self._worker_accepted = Gauge(
            "mimic_worker_associations_accepted",
            "Associations accepted by each worker process since it started.", ["worker"],
            registry=self.registry, multiprocess_mode="livesum",
        ).labels(str(slot))

    def sample(self) -> None:
        """A worker writes what callbacks know into its multiprocess files. From any thread
        (association threads as they end, a scrape's request, the stop): one at a time, or
        two could add the same growth twice."""
        with self._sample_lock:
            if self._active_count is not None:
                self.associations_active.set(self._active_count())
            for counter, count, last in self._sampled:
                now = count()
                if now > last[0]:
                    counter.inc(now - last[0])
                    last[0] = now
            for gauge, value in self._sampled_gauges:
                gauge.set(value())

    # -- DIMSE --------------------------------------------------------------------------------

    def request_answered(self, service: str, status: str, seconds: float) -> None:
        """A final response sent; ``service`` and ``status`` from the fixed sets above."""
        counter = self._requests.get((service, status))
        if counter is None:
            return
        counter.inc()
        self._durations[service].observe(seconds)

    def handler_error(self, service: str) -> None:
        if service in SERVICES:
            self.handler_errors.labels(service).inc()

    def stored(self, size: int) -> None:
        self.stored_bytes.inc(size)

    # -- TLS and certificates -----------------------------------------------------------------

    def handshake_failed(self, reason: str) -> None:
        if reason not in HANDSHAKE_FAILURES:
            reason = "other"
        self.handshake_failures.labels(reason).inc()

    def certificates(
        self, server_not_after: datetime | None, trusted_not_after: list[datetime]
    ) -> None:
        """A bundle was loaded: its server certificate's and trusted set's expiry dates."""
        if self.trusted_certificates is None or self.certificate_not_after is None:
            return  # a worker: its supervisor exports them
        self.trusted_certificates.set(len(trusted_not_after))
        if server_not_after is not None:
            self.certificate_not_after.labels("server").set(server_not_after.timestamp())
        if trusted_not_after:
            self.certificate_not_after.labels("client").set(min(trusted_not_after).timestamp())
        else:
            with contextlib.suppress(KeyError):  # nothing trusted: no soonest expiry
                self.certificate_not_after.remove("client")

    def trust_refresh_failures_from(self, count: Callable[[], int]) -> None:
        """The certificate watcher counts its failed refreshes; read them at scrape time."""
        self._counter_from(
            "mimic_trust_refresh_failures",
            "Certificate source refreshes that failed (the last good set stayed).", count,
        )

    def audit_failures_from(self, count: Callable[[], int]) -> None:
        """The audit trail counts sink writes that failed; read them at scrape time."""
        self._counter_from(
            "mimic_audit_failures",
            "Audit records a sink could not write (file, table); the audit repository's "
            "drops are mimic_audit_syslog_dropped.", count,
        )

    def audit_repository_from(self, sent: Callable[[], int], dropped: Callable[[], int],
                              queued: Callable[[], int], queued_bytes: Callable[[], int]
                              ) -> None:
        """The audit repository's sender (syslog/TLS) counts what it sent and what its full
        queue dropped, and holds the rest; read them at scrape time. Only when one is
        configured: the series are absent otherwise."""
        self._counter_from(
            "mimic_audit_syslog_sent", "Audit messages sent to the audit repository "
            "(syslog/TLS).", sent)
        self._counter_from(
            "mimic_audit_syslog_dropped", "Audit messages dropped, oldest first, from the "
            "full queue of the audit repository (the durable trail still has them).", dropped)
        self._gauge_from(
            "mimic_audit_syslog_queued", "Audit messages waiting for the audit repository.",
            queued)
        self._gauge_from(
            "mimic_audit_syslog_queued_bytes", "Bytes of the audit messages waiting for the "
            "audit repository.", queued_bytes)

    def spooled_objects_from(self, named: Callable[[], int],
                             copied: Callable[[], int]) -> None:
        """The file store counts the large objects it kept by naming their spool file and
        by copying it; read them at scrape time."""
        self._counter_from(
            "mimic_spooled_objects_named",
            "Objects received spooled (too large to hold in memory) that the file store kept "
            "by giving their spool file a name: written once.", named)
        self._counter_from(
            "mimic_spooled_objects_copied",
            "Objects received spooled that the file store kept by copying their spool file, "
            "written twice: it cannot be named there (another file system, another owner, "
            "group or ACL: logged once at INFO).", copied)

    def _counter_from(self, name: str, documentation: str, count: Callable[[], int]) -> None:
        if self.multiprocess:  # no scrape here: sample() adds what the count grew by
            self._sampled.append((Counter(name, documentation, registry=self.registry),
                                  count, [0]))
        else:
            self.registry.register(
                _CallbackCounter(name, documentation, lambda: float(count()))
            )

    def _gauge_from(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        """A gauge read from ``value``: at scrape time, or in a worker at each ``sample()``
        (the supervisor adds the live workers' values)."""
        gauge = Gauge(name, documentation, registry=self.registry, multiprocess_mode="livesum")
        if self.multiprocess:
            self._sampled_gauges.append((gauge, value))
        else:
            gauge.set_function(lambda: float(value()))

    def index_commits_from(self, commits: Callable[[], int],
                           instances: Callable[[], int]) -> None:
        """Group commit counts its shared transactions and the instances they carried (their
        ratio is the mean batch size); read them at scrape time."""
        self._counter_from(
            "mimic_index_group_commits",
            "Shared index transactions of C-STOREs (group commit), committed or failed.",
            commits)
        self._counter_from(
            "mimic_index_group_commit_instances",
            "Instance writes those transactions carried (retries count again).", instances)

    # -- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric. A worker writes its sampled values
        first: its supervisor's scrape asks for this before it reads the files."""
        if self.multiprocess:
            self.sample()
        return generate_latest(self.registry)


class ServerMetrics:
    """The supervisor's ``/metrics``: every worker's values (their multiprocess files in
    ``directory``) and the supervisor's own worker gauges."""

    def __init__(self, directory: Path, configured: int,
                 refresh: Callable[[], None] = lambda: None,
                 certificates: Callable[[], dict[str, float]] = dict,
                 trusted: Callable[[], int | None] = lambda: None) -> None:
        """``refresh()`` runs before each scrape: the workers write their sampled values.
        ``certificates()``: the expiry dates by role the workers reported (the soonest of
        each; a role missing when none has one), exported as a single process does;
        ``trusted()``: the least count of trusted certificates a ready worker reported
        (None: none has reported; the gauge is then absent)."""
        self.directory = directory
        self._refresh = refresh
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(directory))
        self._own = CollectorRegistry()
        self._own.register(_CertificateExpiry(certificates))
        self._own.register(_TrustedCertificates(trusted))
        Gauge("mimic_workers", "Worker processes configured (MIMIC_WORKERS).",
              registry=self._own).set(configured)
        self.ready = Gauge("mimic_workers_ready", "Worker processes up and accepting.",
                           registry=self._own)
        self.restarts = Counter("mimic_worker_restarts",
                                "Worker processes that died and were replaced.",
                                registry=self._own)
        self.associations_lost = Counter(
            "mimic_worker_associations_lost",
            "Associations open on worker processes that died (their peers saw the "
            "connection reset; none reached released or aborted).", registry=self._own)
        #: Held while the workers' files are read (a scrape) or folded (:meth:`worker_ended`).
        self._files = threading.Lock()

    def exposition(self) -> bytes:
        self._refresh()
        with self._files:
            workers = generate_latest(self.registry)
        return workers + generate_latest(self._own)

    def worker_ended(self, pid: int) -> None:
        """Worker ``pid`` has ended: its live gauges go (``mark_process_dead``), and its
        counters and histograms are added into one file kept for every worker that ended
        (``counter_ended.db``, ``histogram_ended.db``; the sums a scrape reports are the
        same). Each worker that ended used to leave two files of its own, read at every
        scrape: a crash loop of a day (a worker killed every minute, say by an object a
        modality sends again and again) made 1440 per slot, and the scrape's time and the
        directory grew without end (660 ms and some 30 MB at 1000 ended workers). Under
        the scrape's lock: a scrape reads the files before the fold or after it, never a
        worker's values twice (a counter seen to fall is a reset to Prometheus) or a file
        gone between its listing and its read (an error)."""
        with self._files:
            mark_process_dead(pid, str(self.directory))
            for kind in ("counter", "histogram"):
                ended = self.directory / f"{kind}_{pid}.db"
                try:
                    values = list(MmapedDict.read_all_values_from_file(str(ended)))
                except FileNotFoundError:
                    continue
                except (struct.error, RuntimeError, UnicodeDecodeError, ValueError):
                    # Empty (killed as it made the file: _WorkerFiles) or damaged: nothing
                    # to keep, and left here it failed every scrape (a counter read whole).
                    values = []
                if values:
                    try:
                        kept = MmapedDict(str(self.directory / f"{kind}_ended.db"))
                    except OSError:
                        # The kept file cannot be opened (descriptors, the directory's
                        # disk): the worker's own file stays and is read as before. Raised,
                        # it ended the supervisor's main loop before the dead worker's slot
                        # was zeroed.
                        continue
                    try:
                        for key, value, timestamp, _ in values:
                            total, _ = kept.read_value(key)
                            kept.write_value(key, total + value, timestamp)
                    finally:
                        kept.close()
                with contextlib.suppress(FileNotFoundError):
                    ended.unlink()


class _WorkerFiles(Collector):
    """prometheus_client's ``MultiProcessCollector`` over the workers' files, but for the
    empty ones. A worker's file exists empty for a moment as it is made (``MmapedDict``
    creates it, then sizes it), and for good where a worker was killed in that moment;
    read, it raised ``struct.error`` out of the whole scrape (/metrics 500; seen while a
    worker was replaced: prometheus/client_python#1199). An empty file holds nothing, and
    one found non-empty was sized already (a file only grows)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        files = []
        for path in self._directory.glob("*.db"):
            with contextlib.suppress(FileNotFoundError):  # a live gauge's, of one ended
                if path.stat().st_size > 0:
                    files.append(str(path))
        return iter(MultiProcessCollector.merge(files, accumulate=True))


class _CertificateExpiry(Collector):
    """``mimic_certificate_not_after_timestamp_seconds`` from the dates the workers reported
    over their status pipes, read at scrape time: a role none of them has any more (every
    client and CA revoked) is absent, as in a single process."""

    def __init__(self, dates: Callable[[], dict[str, float]]) -> None:
        self._dates = dates

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(CERTIFICATE_NOT_AFTER, CERTIFICATE_NOT_AFTER_HELP,
                                   labels=["role"])
        dates = self._dates()
        for role in ROLES:
            if role in dates:
                family.add_metric([role], dates[role])
        yield family


class _TrustedCertificates(Collector):
    """``mimic_trusted_certificates`` from the counts the ready workers reported with their
    certificate dates (the least: a worker that found a revocation first says so)."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        self._count = count

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(TRUSTED_CERTIFICATES, TRUSTED_CERTIFICATES_HELP)
        count = self._count()
        if count is not None:
            family.add_metric([], count)
        yield family
