"""The composition root: builds a running archive from :class:`~mimic_server.config.Settings`.

This is the only module that knows every concrete class (which store, which index, which
certificate source); library internals are patched only through the fence it calls once,
:mod:`mimic_server.patches`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy import Engine

from mimic_server import patches
from mimic_server.backends import (
    close_object_store,
    index_answers,
    open_object_store,
    store_answers,
)
from mimic_server.certs import CertBundle, CertificateSource, devpki
from mimic_server.certs.directory import DirectorySource
from mimic_server.certs.trust import TrustIndex, applied_content
from mimic_server.certs.watcher import CertificateWatcher, warn_expiring
from mimic_server.codec.file_meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from mimic_server.config import MoveDestination, Settings
from mimic_server.dimse import (
    access,
    association,
    audited,
    echo,
    find,
    get,
    move,
    receiving,
    store,
    syntaxes,
)
from mimic_server.dimse.receiving import ReceiveLimits
from mimic_server.dimse.session import session_of
from mimic_server.dimse.store_audit import per_instance
from mimic_server.dimse.unexpected import STATUS, guarded, guarded_stream
from mimic_server.errors import ConfigurationError
from mimic_server.index import Index
from mimic_server.index.repository import SqlIndex
from mimic_server.net import descriptors, observe
from mimic_server.net.server import MimicAssociationServer
from mimic_server.net.tls import destination_context, server_context
from mimic_server.query.finder import Finder
from mimic_server.resources import (
    certificate_source,
    load_policy_file,
    open_audit_trail,
    open_index,
    open_token_validator,
    syslog_context,
)
from mimic_server.security import audit
from mimic_server.security.audit import AuditLog
from mimic_server.security.audit_journal import Journals
from mimic_server.security.policy import Policy
from mimic_server.security.policy_file import PolicyFile
from mimic_server.security.policy_watcher import PolicyWatcher
from mimic_server.security.refusals import RefusalAudit
from mimic_server.security.syslog_tls import SyslogTlsSink
from mimic_server.security.user_identity import UserAuthority
from mimic_server.security.users import UserDirectory
from mimic_server.startup_checks import make_data_dir
from mimic_server.storage import ObjectStore
from mimic_server.web.activity import Activity, Tee
from mimic_server.web.metrics import ArchiveMetrics
from mimic_server.web.ops import OpsState, build_app
from mimic_server.web.server import HttpServer
from mimic_server.workers.link import WorkerLink, trust_token

log = logging.getLogger(__name__)

UNCOMPRESSED = [
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
]


@dataclass(frozen=True)
class FirstStart:
    """What a first start created, so the CLI can tell the operator how to connect."""

    pki: devpki.DevPki


class Archive:
    """A running MIMIC server: listener, index, object store and certificate watcher."""

    def __init__(
        self,
        settings: Settings,
        *,
        object_store: ObjectStore | None = None,
        index: Index | None = None,
        policy: Policy | None = None,
        worker: WorkerLink | None = None,
    ) -> None:
        """``object_store``, ``index`` and ``policy`` replace the configured ones (tests,
        tools). ``worker``: this archive is one of several worker processes on a shared
        listening socket (``mimic_server/workers/``)."""
        self.settings = settings
        self.worker = worker
        self._policy = policy
        self._object_store = object_store
        self._index_override = index
        #: The index this server opened itself (not an override), closed with it.
        self._opened_index: SqlIndex | None = None
        #: The object store this server opened itself (not an override), closed with it: the
        #: file store's spare files in ``.incoming`` are removed only so.
        self._opened_store: ObjectStore | None = None
        self.first_start: FirstStart | None = None
        self.engine: Engine | None = None
        self.server: MimicAssociationServer | None = None
        self.watcher: CertificateWatcher | None = None
        self.policy_watcher: PolicyWatcher | None = None
        self.audit = AuditLog(None)
        #: The audit repository's sender, when one is configured (``_renew_repository_context``).
        self._repository: SyslogTlsSink | None = None
        self.refusals: RefusalAudit | None = None
        self.bundle: CertBundle | None = None
        self._thread: threading.Thread | None = None
        self._credential: Any = None
        self.metrics = ArchiveMetrics(worker=worker is not None)
        #: Per-minute counts for the operator console (``/status/associations``).
        self.activity = Activity()
        self.metrics.trust_refresh_failures_from(
            lambda: self.watcher.failures if self.watcher is not None else 0
        )
        self.ops: HttpServer | None = None
        self._draining = threading.Event()
        self._server_not_after: datetime | None = None
        #: What the listener serves from the last bundle applied (``applied_content``): a
        #: worker tells the supervisor when a new bundle changes it.
        self._applied: frozenset[str] | None = None
        #: C-MOVE client contexts per destination AE, for the current bundle (building one
        #: loads our key; every C-MOVE would otherwise do it again).
        self._destination_contexts: dict[str, ssl.SSLContext] = {}
        self._contexts_lock = threading.Lock()

    # -- building -------------------------------------------------------------------------

    def _certificates(self) -> tuple[CertificateSource, str, CertBundle] | None:
        """The certificate source, its version and first bundle; None when TLS is off."""
        s = self.settings
        tls_destinations = sorted(ae for ae, d in s.move_destinations.items() if d.tls)
        if not s.tls and tls_destinations:
            raise ConfigurationError(
                f"move destinations {', '.join(tls_destinations)} use TLS, which needs the "
                "server certificate: MIMIC_TLS is off"
            )
        if not s.tls:
            log.warning("TLS is OFF: plain TCP, peers are not authenticated (lab use only)")
            return None
        source = self._keyvault_source() if s.keyvault_url else self._directory_source()
        version = source.version()  # before load(): a change in between shows up next poll
        return source, version, source.load()

    def _directory_source(self) -> DirectorySource:
        s = self.settings
        directory = s.certificate_dir
        if not (directory / "server" / "server.pem").exists():
            if s.cert_dir is not None:
                raise ConfigurationError(
                    f"no server certificate in {directory / 'server'}: run 'mimic certs init'"
                )
            pki = devpki.init(directory)
            if pki.created:
                self.first_start = FirstStart(pki)
        return DirectorySource(directory)

    def _azure_credential(self) -> Any:
        """One DefaultAzureCredential per process, made only when something Azure needs it."""
        if self._credential is None:
            # Imported here: the Azure SDK is only loaded when used.
            from azure.identity import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return self._credential

    def _keyvault_source(self) -> CertificateSource:
        s = self.settings
        assert s.keyvault_url is not None
        if not s.keyvault_verify_challenge_resource:
            log.warning(
                "Key Vault challenge-resource check is OFF: for an emulator on loopback only"
            )
        return certificate_source(s, self._azure_credential())

    def _index(self) -> SqlIndex:
        s = self.settings
        credential = self._azure_credential() if s.database_auth == "entra" else None
        revision = self.worker.schema_revision if self.worker is not None else None
        self.engine, index = open_index(s, credential, revision, deadlines=True)
        self._opened_index = index
        return index

    def _audit_journals(self) -> Journals | None:
        """Where the trail records per association (the file): the journals of its received
        instances, for the records of an association whose end never comes. A start
        writes those of a server killed whole; a worker's are its supervisor's to write,
        when it dies (``security/audit_journal.py``)."""
        if self.audit.path is None or per_instance(self.audit):
            return None
        journals = Journals(self.settings.audit_journal_path, self.audit.path)
        if self.worker is None:
            journals.recover(self.audit)
        return journals

    def _ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = s.max_pdu_size
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        # Our own limit counts open sockets (see net/server.py); pynetdicom's counts threads.
        ae.maximum_associations = max(1000, s.max_associations * 10)
        ae.require_called_aet = False  # the policy decides, with a logged reason
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(
                context.abstract_syntax, syntaxes.ARCHIVE_TRANSFER_SYNTAXES
            )
        for sop_class in find.MODELS:
            ae.add_supported_context(sop_class, UNCOMPRESSED)
        return ae

    def start(self) -> None:
        """Build everything and start listening; raise ConfigurationError on bad settings."""
        # pynetdicom's switches and MIMIC's patches of library internals, each only where the
        # library's call site is the verified one (patches.py); the rest run the library's own.
        fence = patches.apply()
        s = self.settings
        make_data_dir(s.data_dir)
        certificates = self._certificates()
        index = self._index_override or self._index()
        object_store = self._object_store
        if object_store is None:
            object_store = self._opened_store = open_object_store(
                s, self._azure_credential()
                if s.uses_blob_storage and not s.blob_connection_string else None,
                warn=self.worker is None,
            )
        # The trail before anything that records to it (the policy file's first load); its
        # syslog client certificate defaults to the server's own.
        self.audit = open_audit_trail(s, self.engine, certificates[2] if certificates else None)
        self.metrics.audit_failures_from(lambda: self.audit.failures)
        journals = self._audit_journals()
        repository = next((sink for sink in self.audit.sinks
                           if isinstance(sink, SyslogTlsSink)), None)
        self._repository = repository
        if repository is not None:
            self.metrics.audit_repository_from(
                lambda: repository.sent, lambda: repository.dropped, repository.pending,
                lambda: repository.queued_bytes)
        if hasattr(object_store, "spools_named"):  # the file store
            self.metrics.spooled_objects_from(lambda: object_store.spools_named,
                                              lambda: object_store.spools_copied)
        committer = getattr(index, "committer", None)  # group commit (None: off)
        if committer is not None:
            self.metrics.index_commits_from(lambda: committer.batches,
                                            lambda: committer.instances)
        self.refusals = RefusalAudit(self.audit, s.audit_refusal_interval)
        self.refusals.start()
        policy = self._policy or Policy(s.ae_title, s.require_called_ae_title)
        if policy.audit_log is None:
            policy.audit_log = self.audit
        policy_file = self._policy_file(policy)
        users = self._user_authority()
        ae = self._ae()

        context, trust, source, version = None, None, None, None
        if certificates is not None:
            source, version, bundle = certificates
            self.bundle = bundle
        if certificates is not None:
            context = server_context(bundle, s.tls_session_tickets)
            trust = TrustIndex(bundle)
            self._applied = applied_content(bundle)
            warn_expiring(bundle)
            self._observe_bundle(bundle)

        if s.ops_port:  # bound before the DICOM port: a taken one fails before anything accepts
            self._bind_ops(object_store)
        max_pdu_read = max(s.max_pdu_size + 4096, 1 << 20)
        fd_limit = descriptors.raise_soft_limit()
        try:
            server = MimicAssociationServer(
                ae,
                (s.host, s.port),
                s.ae_title,
                fence.listener_contexts(ae.supported_contexts),
                ssl_context=context,
                trust=trust,
                handshake_timeout=s.handshake_timeout,
                network_timeout=s.network_timeout,
                max_pdu_read=max_pdu_read,
                max_pending_handshakes=descriptors.pending_handshake_cap(
                    s.max_pending_handshakes, s.max_associations, fd_limit,
                    descriptors.DATABASE_POOL if s.index_url.startswith("sqlite")
                    else s.database_pool_size,
                ),
                listen_backlog=s.listen_backlog,
                on_refused=self._audit_refusal,
                adapt_association=fence.association_adapter(
                    max_pdu_read, ReceiveLimits(s.max_object_bytes, s.spool_path)
                ),
                listening_socket=self.worker.listen_socket if self.worker else None,
                on_associations_changed=self._associations_changed,
                event_driven_accept=fence.event_driven_accept,
                accept_share=self.worker,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}"
            ) from exc
        server.bind(
            evt.EVT_REQUESTED,
            association.handle_requested,
            [policy, _Slots(server, s.max_associations, self._association_count(server),
                            self._associations_changed), self.audit, users],
        )
        server.bind(evt.EVT_USER_ID, access.handle_user_id)
        server.bind(evt.EVT_REQUESTED, syntaxes.prefer_stored_encoding)
        server.bind(evt.EVT_ACSE_SENT, association.handle_acse_sent)
        server.bind(evt.EVT_RELEASED, association.handle_released)
        server.bind(evt.EVT_CONN_CLOSE, association.handle_conn_close, [self.audit])
        server.bind(evt.EVT_CONN_CLOSE, receiving.discard_partial)
        # Every DIMSE handler: an unexpected exception is logged, counted and answered
        # (unexpected.py).
        counted = self.metrics.handler_error
        server.bind(evt.EVT_C_ECHO, guarded(echo.handle_echo, "C-ECHO", STATUS["C-ECHO"], counted),
                    [policy])
        server.bind(
            evt.EVT_C_STORE, guarded(store.handle_store, "C-STORE", STATUS["C-STORE"], counted),
            [object_store, index, policy, self.audit, journals],
        )
        server.bind(evt.EVT_SOP_EXTENDED, association.handle_sop_extended)
        if self.engine is not None:
            finder = Finder(
                self.engine, retrieve_ae_title=s.ae_title, max_results=s.max_find_results,
                time_limit=s.find_time_limit_seconds,
            )
            server.bind(
                evt.EVT_C_FIND,
                guarded_stream(audited.audited_find(find.handle_find, self.audit), "C-FIND",
                               STATUS["C-FIND"], 0, counted),
                [finder, policy],
            )
            server.bind(
                evt.EVT_C_GET,
                guarded_stream(audited.audited_retrieve(get.handle_get, self.audit, "C-GET"),
                               "C-GET", STATUS["C-GET"], 1, counted),
                [finder, object_store, policy],
            )
            server.bind(
                evt.EVT_C_MOVE,
                guarded_stream(audited.audited_retrieve(move.handle_move, self.audit, "C-MOVE"),
                               "C-MOVE", STATUS["C-MOVE"], 2, counted),
                [finder, object_store, policy, self._move_target, fence.requestor_adapter],
            )
        observe.bind(server, Tee(self.metrics, self.activity))
        self.metrics.active_associations_from(
            lambda: sum(1 for a in server.active_associations if a.is_established)
        )
        fence.register_server(ae, server)  # so that ae.shutdown() and server.shutdown() work
        self.server = server
        if self.worker is not None:
            self.metrics.serve_as_worker(self.worker.slot)

        if source is not None:
            self.watcher = CertificateWatcher(
                source, s.cert_refresh_seconds, self._apply_bundle, version, self.bundle,
                sweep=self._abort_expired,
            )
            self.watcher.start()
        if policy_file is not None:
            source, version = policy_file
            self.policy_watcher = PolicyWatcher(
                source, s.cert_refresh_seconds, lambda rules: setattr(policy, "rules", rules),
                self.audit, version,
            )
            self.policy_watcher.start()
        self._thread = threading.Thread(
            target=self._serve, args=(server,), name="mimic-listener", daemon=True
        )
        self._thread.start()
        if self.ops is not None:
            self.ops.start()
        elif self.worker is not None:
            self._start_status_for_supervisor()
        self.audit.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="started")
        if self.worker is not None:  # the supervisor says "listening" once all are ready
            self.worker.report(event="ready", server_not_after=self._not_after_timestamp())
        log.info(
            "listening" if self.worker is None else "worker listening",
            extra={
                "address": f"{self.address[0]}:{self.address[1]}", "ae_title": s.ae_title,
                "tls": s.tls, "index": self.engine.dialect.name if self.engine else "",
                "objects": s.blob_container if s.uses_blob_storage else str(s.objects_dir),
                "ops": f"{self.ops.address[0]}:{self.ops.address[1]}" if self.ops else "off",
            },
        )

    def _associations_changed(self) -> None:
        """A connection closed or an association's thread ended (in its thread). A worker
        publishes its count for the others' admission checks and writes what its metrics
        read by callback (``workers/``): when it changes, not on a timer, so an idle worker
        writes nothing. A single process reads both when asked."""
        server, worker = self.server, self.worker
        if worker is None or server is None:
            return
        try:
            worker.publish(server.live_associations)
            self.metrics.sample()
        except Exception:  # never in the way of the association's own end
            log.exception("publishing the worker's counts failed")

    def _association_count(self, server: MimicAssociationServer) -> Callable[[], int]:
        """What the admission check counts: this process's open associations, or with
        several workers the server's total (``workers/table.py``)."""
        if self.worker is None:
            return server.live_associations
        return self.worker.live_total(server.live_associations)

    def _not_after_timestamp(self) -> float | None:
        not_after = self._server_not_after
        return not_after.timestamp() if not_after is not None else None

    def _policy_file(self, policy: Policy) -> tuple[PolicyFile, str] | None:
        return load_policy_file(self.settings, policy)

    def _user_authority(self) -> UserAuthority:
        """Who verifies User Identity Negotiation items: the OIDC issuer (JWT), the user
        file (username and passcode); either may be absent (then that type is refused)."""
        s = self.settings
        tokens = open_token_validator(s)
        users = None
        if s.users_file is not None:
            if not s.users_file.is_file():
                raise ConfigurationError(f"users file {s.users_file} does not exist")
            users = UserDirectory(s.users_file)
        return UserAuthority(tokens, users)

    def _bind_ops(self, object_store: ObjectStore) -> None:
        """The operations HTTP listener: health, readiness, metrics (``web/``); its port is
        bound here, and served once the DICOM listener runs (``/readyz`` asks it)."""
        s = self.settings
        state = OpsState(
            alive=self.listener_alive,
            draining=self._draining.is_set,
            checks={
                "index": self._index_answers,
                "object_store": lambda: store_answers(object_store),
                "certificate": self._certificate_valid,
            },
            metrics=self.metrics,
            status=self.status,
        )
        self.ops = HttpServer(build_app(state), s.ops_host, s.ops_port)

    def _start_status_for_supervisor(self) -> None:
        """A worker's open associations live in its own memory: it answers
        ``/status/associations`` on a loopback port of its own, which it reports to the
        supervisor (the ops port's ``/status/associations`` merges every worker's). Asked,
        not pushed: an idle worker writes nothing."""
        state = OpsState(alive=self.listener_alive, draining=self._draining.is_set,
                         checks={}, metrics=self.metrics, status=self.status)
        self.ops = HttpServer(build_app(state), "127.0.0.1", 0, name="worker status")
        self.ops.start()
        assert self.worker is not None
        self.worker.report(event="status-port", status_port=self.ops.address[1])

    def status(self) -> dict[str, object]:
        """The open associations and the last hour per minute, for the operator console."""
        server = self.server
        associations = []
        now = time.monotonic()
        for assoc in list(server.active_associations) if server is not None else []:
            session = session_of(assoc)
            if session is None or not assoc.is_established:
                continue
            with session.lock:
                stored, size = session.stored, session.bytes_stored
            associations.append({
                "peer": session.peer_address, "calling_ae": session.calling_ae_title.strip(),
                "called_ae": session.called_ae_title.strip(),
                "identity": session.identity.label, "trust_name": session.identity.trust_name,
                "user": session.user.name if session.user is not None else None,
                "service": ", ".join(observe.in_flight(assoc)) or None,
                "services_granted": sorted(s.value for s in session.services or ()),
                "objects": stored, "bytes": size, "seconds": round(now - session.started, 1),
            })
        return {"associations": associations, "minutes": self.activity.minutes()}

    def _index_answers(self) -> str:
        if self.engine is None:
            return "not an SQL index"
        return index_answers(self.engine)

    def _certificate_valid(self) -> str:
        if not self.settings.tls:
            return "TLS off"
        not_after = self._server_not_after
        if not_after is None:
            raise ConfigurationError("no server certificate loaded")
        if not_after <= datetime.now(UTC):
            raise ConfigurationError(f"server certificate expired {not_after.isoformat()}")
        return f"server certificate valid until {not_after.isoformat()}"

    def _observe_bundle(self, bundle: CertBundle) -> None:
        try:
            server = x509.load_pem_x509_certificate(bundle.server_chain_pem)
        except ValueError:
            server = None  # server_context() has refused such a bundle already
        self._server_not_after = server.not_valid_after_utc if server is not None else None
        trusted = [t.certificate.not_valid_after_utc for t in bundle.currently_valid()]
        if self.worker is not None:  # the supervisor exports both (web/metrics.py)
            self.worker.report(
                event="certificate", server_not_after=self._not_after_timestamp(),
                client_not_after=min(trusted).timestamp() if trusted else None,
                trusted_certificates=len(trusted),
            )
        self.metrics.certificates(self._server_not_after, trusted)

    def _move_target(self, ae_title: str) -> move.MoveTarget | None:
        """The C-MOVE destination registry (``MIMIC_MOVE_DESTINATIONS``) as the handler sees it."""
        destination = self.settings.move_destinations.get(ae_title)
        if destination is None:
            return None
        tls = (lambda: self._destination_tls(ae_title, destination)) if destination.tls else None
        return move.MoveTarget(destination.host, destination.port, tls)

    def _destination_tls(
        self, ae_title: str, destination: MoveDestination
    ) -> tuple[ssl.SSLContext, str]:
        """The destination's client context, made at its first C-MOVE and after each
        certificate change. ConfigurationError when it cannot be made (no server
        certificate; its ``ca_file`` removed, unreadable or no longer PEM since start): the
        C-MOVE answers it as an unreachable destination (``dimse/move.py``)."""
        with self._contexts_lock:
            context = self._destination_contexts.get(ae_title)
            if context is None:
                if self.bundle is None:
                    raise ConfigurationError(
                        "a TLS move destination needs the server's certificate"
                    )
                ca_file = destination.ca_file
                try:
                    # Read as OpenSSL reads it (the start's check does): its PEM blocks are
                    # ASCII, a note beside them need not be. As UTF-8 text a Latin-1 note
                    # failed the read, and a UTF-8 one raised out of
                    # load_verify_locations(cadata=...) in the C-MOVE handler (0xC514).
                    extra = ca_file.read_bytes().decode("ascii", "ignore") if ca_file else ""
                    context = destination_context(self.bundle, extra)
                except OSError as exc:
                    reason = getattr(exc, "strerror", None) or type(exc).__name__
                    raise ConfigurationError(f"CA file {ca_file} cannot be read: {reason}") from exc
                except ssl.SSLError as exc:
                    raise ConfigurationError(
                        f"CA file {ca_file} holds no PEM certificate that can be loaded"
                        if ca_file else "the CAs to verify the destination cannot be loaded"
                    ) from exc
                self._destination_contexts[ae_title] = context
        return context, destination.server_name or destination.host

    def _apply_bundle(self, bundle: CertBundle) -> CertBundle:
        """Apply a new bundle; the bundle served (its server identity may be the one kept)."""
        assert self.server is not None
        context, bundle = self._new_context(bundle)
        trust = TrustIndex(bundle)
        applied = applied_content(bundle)
        # The supervisor has the other workers look at once, on any change of what is served
        # (a client or CA revoked or added, a binding edited, the server certificate
        # rotated; the client fingerprints alone missed all but the first), not on a mere
        # re-read of the same files.
        if self.worker is not None and applied != self._applied:
            self.worker.report(event="trust-changed", trust=trust_token(applied))
        self._applied = applied
        with self._contexts_lock:
            self.bundle = bundle
            self._destination_contexts.clear()  # built again from the new bundle when used
        self._renew_repository_context(bundle)
        aborted = self.server.apply_trust(context, trust, self.settings.abort_revoked)
        self._observe_bundle(bundle)
        self.audit.record(
            audit.SECURITY_ALERT, audit.SUCCESS, event_type="security-configuration",
            subject="trusted certificates", reason="trust set changed",
            trusted=len(trust.fingerprints), aborted=aborted,
        )
        self._record_aborted(aborted)
        log.info(
            "trust set updated",
            extra={"trusted": len(trust.fingerprints), "aborted_associations": aborted},
        )
        return bundle

    def _abort_expired(self) -> int:
        """Abort the open associations whose certificate expired since their handshake, as
        :meth:`_apply_bundle` does a pinned one's (which leaves the trust set as it
        expires); one a trusted CA issued changes no trust set, so the watcher asks at each
        poll. Audited as those are; how many."""
        if self.server is None or not self.settings.abort_revoked:
            return 0
        aborted = self.server.abort_untrusted()
        self._record_aborted(aborted)
        return aborted

    def _record_aborted(self, aborted: int) -> None:
        """The Security Alert of associations aborted for a certificate no longer trusted
        (revoked, its CA retired, expired), when there were any."""
        if aborted:
            self.audit.record(
                audit.SECURITY_ALERT, audit.MINOR_FAILURE, event_type="node-authentication",
                subject="revoked certificates",
                reason="associations of certificates no longer trusted were aborted",
                aborted=aborted,
            )

    def _renew_repository_context(self, bundle: CertBundle) -> None:
        """The audit repository's next connections present the server certificate of
        ``bundle`` when it is the one shown to it (no client certificate of its own); one
        that cannot be made keeps the context in use, said at ERROR. Whatever fails here
        never reaches the watcher: it runs before the trust set is applied, and an error let
        through failed the whole refresh, every revocation held back."""
        repository = self._repository
        if repository is None or self.settings.audit_syslog_client_cert is not None:
            return
        try:
            repository.use_context(syslog_context(self.settings, bundle))
        except Exception as exc:  # the trust set must be applied regardless
            reason = str(exc) if isinstance(exc, ConfigurationError) else type(exc).__name__
            log.error("audit repository keeps its TLS context", extra={"reason": reason})

    def _new_context(self, bundle: CertBundle) -> tuple[ssl.SSLContext, CertBundle]:
        """The listener's context for a new bundle, and the bundle it serves.

        Trust and the server's identity change apart: a new server certificate that cannot
        be served (its key is not its own, it is outside its validity period) is refused and
        the one in service kept, with the new trusted set all the same. Refusing the bundle
        whole would hold every revocation back for as long as the server certificate stays
        broken (open associations of a revoked modality not aborted, new ones admitted).
        With no identity in service yet (start), it fails."""
        tickets, served = self.settings.tls_session_tickets, self.bundle
        new = served is None or not _same_identity(served, bundle)
        try:
            return server_context(bundle, tickets, new_identity=new), bundle
        except ConfigurationError as exc:
            if served is None or not new:
                raise  # nothing else to serve, or what failed is not the server's identity
            log.error(
                "new server certificate refused; the one in service is kept, trust changes "
                "are applied",
                extra={"error": str(exc)},
            )
            kept = replace(bundle, server_chain_pem=served.server_chain_pem,
                           server_key_pem=served.server_key_pem)
            return server_context(kept, tickets, new_identity=False), kept

    def _audit_refusal(self, peer: str, reason: str) -> bool:
        """Count a refused connection; True when the listener should log it now."""
        self.metrics.handshake_failed(observe.handshake_failure_reason(reason))
        if self.refusals is None:
            return True
        return self.refusals.note(peer.rpartition(":")[0] or peer, reason)

    @staticmethod
    def _serve(server: MimicAssociationServer) -> None:
        """The accept loop; if it ever ends by an exception, say so (the CLI then exits).

        pynetdicom's loop runs a full ``gc.collect()`` every 60 polls (12 s) with the GIL
        held (MIMIC's event-driven loop: 12 s after an association ended, or every 60
        accepts; ``net/server.py``), ~100 ms over the start-up heap (modules, dictionaries,
        contexts) that never becomes garbage: frozen, that heap is not scanned again.
        ``poll_interval`` only counts where the fence left pynetdicom's polling loop."""
        gc.freeze()
        try:
            server.serve_forever(poll_interval=0.2)
        except BaseException:  # the thread ends; listener_alive() now says so
            log.critical("the listener stopped", exc_info=True)

    # -- running ----------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def listener_alive(self) -> bool:
        """True while the archive accepts connections: its accept loop and handshake loop
        both run. False before start and after stop (health checks, ``mimic serve``)."""
        server, thread = self.server, self._thread
        return (
            server is not None and thread is not None and thread.is_alive()
            and server.listening()
        )

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def begin_drain(self) -> None:
        """Not ready from now on (``/readyz`` 503). Not from a signal handler: setting the
        Event takes its lock (``mimic_server/signals.py``); the main loop calls it."""
        self._draining.set()

    def refresh_certificates(self) -> None:
        """SIGHUP: read the certificates and the policy file again at once."""
        if self.watcher is not None:
            self.watcher.refresh_now()
        if self.policy_watcher is not None:
            self.policy_watcher.refresh_now()

    def stop(
        self, drain_seconds: float | None = None,
        wait: Callable[[float], bool | None] = time.sleep,
    ) -> None:
        """Stop accepting, let open associations finish up to the drain time, then abort.

        ``wait(seconds)`` is how the drain waits between two looks at what is still open:
        ``mimic serve`` acts on a SIGHUP there (:meth:`refresh_certificates`), so that a
        certificate revoked while the drain runs has its associations aborted at once;
        a drain that only slept left them storing until its end. It returns True when the
        drain is to end now (the operator repeated the stop): what is open is aborted."""
        drain = self.settings.drain_seconds if drain_seconds is None else drain_seconds
        self.begin_drain()
        server = self.server
        if server is not None:
            if self._thread is not None and self._thread.is_alive():
                server.shutdown()  # stops the accept loop and closes the listening socket
            else:  # the accept loop is gone already (it died): only close
                server.server_close()
            if self.worker is not None:  # the supervisor waits for this to say "draining"
                self.worker.report(event="draining")
            deadline = time.monotonic() + drain
            while server.active_associations and time.monotonic() < deadline:
                if wait(min(0.1, max(0.0, deadline - time.monotonic()))) is True:
                    log.warning("drain cut short", extra={
                        "open_associations": len(server.active_associations)})
                    break
            remaining = server.active_associations
            for assoc in remaining:
                assoc.abort()
            if self.worker is not None:  # the supervisor says "stopped", with the total
                self.worker.report(event="stopped", aborted_associations=len(remaining))
            log.info("stopped" if self.worker is None else "worker stopped",
                     extra={"aborted_associations": len(remaining)})
            self.server = None
        if self.ops is not None:
            self.ops.stop()  # after the drain: probes see 503 from /readyz meanwhile
            self.ops = None
        if self.watcher is not None:
            self.watcher.stop()
        if self.policy_watcher is not None:
            self.policy_watcher.stop()
        if self.worker is not None:
            with contextlib.suppress(Exception):  # the last counts, for the supervisor's sum
                self.metrics.sample()
            self.worker.close()
        if self.refusals is not None:
            self.refusals.close()
        # Before the engine goes: in the PostgreSQL configuration the trail is a table.
        self.audit.record(audit.APPLICATION_ACTIVITY, audit.SUCCESS, action="stopped")
        self.audit.close()
        if self._opened_index is not None:
            self._opened_index.close()
        if self.engine is not None:
            self.engine.dispose()
        if self._opened_store is not None:  # last: an aborted association's put had time
            close_object_store(self._opened_store)
            self._opened_store = None


def _same_identity(a: CertBundle, b: CertBundle) -> bool:
    return a.server_chain_pem == b.server_chain_pem and a.server_key_pem == b.server_key_pem


@dataclass(frozen=True, slots=True)
class _Slots:
    """The association slots of MIMIC_MAX_ASSOCIATIONS, as the admission check claims them:
    the listener counts and claims, ``count`` is this process's admitted associations or
    every worker's, ``changed`` publishes a claim to the other workers and the metrics."""

    server: MimicAssociationServer
    limit: int
    count: Callable[[], int]
    changed: Callable[[], None]

    def take(self, assoc: Any) -> bool:
        taken = self.server.take_association_slot(assoc, self.limit, self.count)
        self.changed()  # a refused claim was published as it was counted: undone here
        return taken

    def give_back(self, assoc: Any) -> None:
        self.server.give_back_association_slot(assoc)
        self.changed()
