"""Objects as block blobs in one Azure Blob Storage container: the Azure mode's object store.

Blob names are the object keys of :mod:`mimic_server.storage.keys` unchanged
(``ab/<Study UID>/<Series UID>/<SOP Instance UID>.<version>.dcm``), so a container listing
reads like the archive and the two-hex-digit prefix spreads a study's load across partitions.

Integrity, end to end:

* every staged block (or single-shot upload) carries a transactional MD5 that the service
  checks before accepting it (``validate_content=True`` for a block; for a single shot the
  MD5 of the whole, computed once, sent as the request's ``Content-MD5``);
* the committed blob carries the MD5 of the whole object as its ``Content-MD5`` property,
  computed while streaming, and the SHA-256 the index holds as metadata ``sha256``;
* every range read back is MD5-checked by the SDK (ranges of ``READ_RANGE``, at most 4 MiB).

Memory stays bounded: an object is uploaded in ``block_size`` blocks sliced from the caller's
chunks and read back range by range, so a 200 MB object never sits whole in this module.

Transient faults are retried by the SDK with a bounded exponential policy and short
connection/read timeouts, so a store that stays down surfaces as
:class:`~mimic_server.errors.OutOfResources` well inside the DIMSE timeout, never a hang.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings, ExponentialRetry

from mimic_server.errors import ConfigurationError, OutOfResources
from mimic_server.storage.blob_session import BlobSession

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["AzureBlobStore", "blob_service_client"]

MiB = 1024 * 1024
#: Reads go range by range. The service checks a transactional MD5 only on ranges of at most
#: 4 MiB; and the SDK joins each range with ``list(response)`` where the response's ``__len__``
#: is its byte count, so CPython briefly preallocates 8 bytes per byte of range (32 MiB for a
#: 4 MiB range; seen with azure-storage-blob 12.31 / azure-core 1.41). 2 MiB keeps that at 16.
READ_RANGE = 2 * MiB
CONTENT_TYPE = "application/dicom"
#: How long the delete after a failed commit waits for the service, at most (seconds).
FORGET_TIMEOUT = 3.0
#: The blocks one block blob may commit (the service refuses the 50,001st).
MAX_BLOCKS = 50_000
#: The block size of every put: the largest object a blob holds is ``MAX_BLOCKS`` of them.
BLOCK_SIZE = 4 * MiB
#: Room for what the archive writes before a data set (preamble, file meta information).
PART10_ALLOWANCE = 1 * MiB


def largest_data_set(block_size: int = BLOCK_SIZE) -> int:
    """The largest data set a blob of ``block_size`` blocks can hold as a Part 10 file."""
    return MAX_BLOCKS * block_size - PART10_ALLOWANCE


def blob_service_client(
    *,
    account_url: str | None = None,
    credential: TokenCredential | None = None,
    connection_string: str | None = None,
    retries: int = 2,
    timeout: float = 10.0,
    connections: int = 32,
) -> BlobServiceClient:
    """A client whose retries and timeouts are bounded and whose connections are pooled.

    The SDK's default retry waits 15 s and more between attempts. Here a request is tried
    ``1 + retries`` times, each waiting at most ``timeout`` seconds for the service, with
    ~0.5-3 s back-off between tries: with the defaults (2, 10 s) a black-holed endpoint costs
    about 35 s, a refused connection a few seconds, both answered as Out of Resources inside
    the 60 s DIMSE timeout of a typical sender.

    ``connections`` is how many keep-alive connections to the account are kept for reuse:
    every association may be putting an object at the same moment, and the SDK's default
    (10, from ``requests``) makes the eleventh concurrent put open a new TCP (and TLS)
    connection, a round trip or two more, and close it afterwards.
    """
    if connections < 1:
        raise ConfigurationError("blob connections must be at least 1")
    options: dict[str, Any] = {
        "retry_policy": ExponentialRetry(
            initial_backoff=0.5, increment_base=2, retry_total=retries, random_jitter_range=0.5
        ),
        "transport": _transport(connections, min(timeout, 10.0), timeout),
        "max_single_get_size": READ_RANGE,
        "max_chunk_get_size": READ_RANGE,
    }
    # The SDK refuses a malformed connection string or URL with a ValueError, which went up
    # as a traceback (``mimic serve`` exit 1, ``mimic reconcile`` 1 as for drift). Its text
    # may quote the URL, and a URL or connection string can carry a SAS token or account
    # key: the one line names the setting, never its value.
    if connection_string:
        try:
            return BlobServiceClient.from_connection_string(connection_string, **options)
        except ValueError as exc:
            raise ConfigurationError("blob connection string unusable: malformed or missing "
                                     "the account's endpoint or name") from exc
    if not account_url or credential is None:
        raise ConfigurationError("Blob Storage needs an account URL and a credential")
    try:
        return BlobServiceClient(account_url, credential=credential, **options)
    except ValueError as exc:
        raise ConfigurationError("blob account URL unusable: expected "
                                 "https://<account>.blob.core.windows.net") from exc


def uses_environment_settings(environ: Mapping[str, str] | None = None,
                               home: Path | None = None) -> bool:
    """Whether ``requests`` must consult the environment on each request: only when a proxy
    (``HTTPS_PROXY``, ``NO_PROXY``, any ``*_proxy``) or a netrc file is configured.

    Without them the answer is the same for every request, yet ``requests`` works it out
    again each time, scanning the whole environment twice and looking for ``~/.netrc``:
    about a tenth of a blob put's CPU time here. So the environment is read once, at start,
    and consulted per request only when it says something (a CA bundle named there is
    resolved at start too: :func:`ca_bundle`)."""
    env = os.environ if environ is None else environ
    home = Path.home() if home is None else home
    if env.get("NETRC"):
        return True
    if any(value and name.lower().endswith("_proxy") for name, value in env.items()):
        return True
    return any((home / name).exists() for name in (".netrc", "_netrc"))


def ca_bundle(environ: Mapping[str, str] | None = None) -> str | bool:
    """The CA bundle ``requests`` would verify the service against: ``REQUESTS_CA_BUNDLE``,
    else ``CURL_CA_BUNDLE``, else True (certifi's), as ``requests`` itself chooses it."""
    env = os.environ if environ is None else environ
    return env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE") or True


def _transport(connections: int, connection_timeout: float, read_timeout: float,
               ) -> RequestsTransport:
    """The SDK's own ``requests`` transport, on a session whose pool holds ``connections``.

    Mounted the way the SDK mounts its own adapter: urllib3 retries off (the SDK's retry
    policy is the one that retries). The session is a
    :class:`~mimic_server.storage.blob_session.BlobSession`: where the environment configures
    nothing (no proxy, no netrc) its puts skip requests' own layers; where it does, every
    request takes requests' path, the environment consulted each time."""
    env_settings = uses_environment_settings()
    verify = ca_bundle()
    session = BlobSession(connections, verify)
    session.trust_env = env_settings
    return RequestsTransport(
        session=session, session_owner=True, use_env_settings=env_settings,
        connection_timeout=connection_timeout, read_timeout=read_timeout,
        connection_verify=verify,
    )


class AzureBlobStore:
    """An :class:`~mimic_server.storage.ObjectStore` on one Blob Storage container."""

    #: Each blob carries its SHA-256 as metadata ``sha256``, for anyone who reads the
    #: container without the index.
    records_sha256 = True

    def __init__(
        self,
        service: BlobServiceClient,
        container: str = "dicom",
        *,
        create_container: bool = True,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        """``create_container`` is for first starts; raise ConfigurationError if unusable."""
        if not 1 <= block_size <= 100 * MiB:
            raise ConfigurationError("block size must be between 1 byte and 100 MiB")
        self.block_size = block_size
        self._container: ContainerClient = service.get_container_client(container)
        try:
            if create_container:
                with contextlib.suppress(ResourceExistsError):
                    self._container.create_container()
            elif not self._container.exists():
                raise ConfigurationError(f"blob container {container!r} does not exist")
        except AzureError as exc:
            raise ConfigurationError(
                f"blob container {container!r} unusable: {_summary(exc)}") from exc

    @property
    def container(self) -> ContainerClient:
        return self._container

    def put(self, key: str, chunks: Iterable[bytes | memoryview], sha256: str | None) -> int:
        """Upload block by block; commit with Content-MD5 and ``sha256`` metadata."""
        if sha256 is None:
            raise TypeError("a blob is kept with its SHA-256: records_sha256")
        blob = self._container.get_blob_client(key)
        md5 = hashlib.md5(usedforsecurity=False)
        block_ids: list[str] = []
        size = 0
        committing = False
        try:
            blocks = _blocks(chunks, self.block_size)
            first = next(blocks, b"")
            second = next(blocks, None)
            if second is None:  # one block: one request, Content-MD5 checked by the service
                md5.update(first)
                digest = md5.digest()
                committing = True
                # The MD5 is sent as the request's Content-MD5 (the service refuses a body
                # that does not match it) instead of ``validate_content=True``, with which
                # the SDK hashes the body a second time: 0.7-0.8 ms of CPU per 0.5 MB.
                blob.upload_blob(
                    first, overwrite=True, metadata={"sha256": sha256},
                    content_settings=ContentSettings(CONTENT_TYPE, content_md5=digest),
                    headers={"Content-MD5": base64.b64encode(digest).decode("ascii")},
                )
                return len(first)
            for block in _chain(first, second, blocks):
                md5.update(block)
                block_id = f"{len(block_ids):08d}"
                blob.stage_block(block_id, block, length=len(block), validate_content=True)
                block_ids.append(block_id)
                size += len(block)
            committing = True
            blob.commit_block_list(
                block_ids, metadata={"sha256": sha256},
                content_settings=ContentSettings(CONTENT_TYPE, content_md5=md5.digest()),
            )
        except AzureError as exc:
            # Staged but uncommitted blocks are garbage-collected by the service in 7 days.
            if committing:
                self._forget(key)
            raise OutOfResources(f"blob store write failed: {_reason(exc)}") from exc
        except OSError as exc:
            # The object's own bytes could not be read (a spool file's disk): refused as the
            # file store refuses it, Out of Resources, not an unexpected error (0xC211).
            raise OutOfResources("blob store write failed: the object could not be read "
                                 f"({type(exc).__name__})") from exc
        return size

    def _forget(self, key: str) -> None:
        """After a commit (or single-shot upload) that failed: the service may have kept
        the blob all the same, its answer lost (a connection cut, a timeout). A put that
        fails leaves nothing under its key, as the file store's does, or the caller's
        failure path (a C-STORE into a known series deletes nothing after a failed put)
        left an orphan blob, for ``mimic reconcile``. One try, within
        :data:`FORGET_TIMEOUT`: the store is failing already, and the C-STORE waits for it
        (with the client's retries and timeouts, 35 s where the service does not answer,
        the answer would come after a sender's DIMSE timeout); an orphan it leaves is
        reconcile's, as before."""
        with contextlib.suppress(AzureError):
            self._container.delete_blob(
                key, delete_snapshots="include", retry_total=0,
                connection_timeout=FORGET_TIMEOUT, read_timeout=FORGET_TIMEOUT,
            )

    def open(self, key: str) -> BinaryIO:
        """A buffered stream over the blob's ranges; the first range is fetched now."""
        try:
            downloader = self._container.get_blob_client(key).download_blob(
                validate_content=True, max_concurrency=1
            )
        except ResourceNotFoundError:
            raise KeyError(key) from None
        except AzureError as exc:
            raise OutOfResources(f"blob store read failed: {_reason(exc)}") from exc
        return io.BufferedReader(_RangeReader(downloader.chunks()), buffer_size=256 * 1024)  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        try:
            self._container.delete_blob(key, delete_snapshots="include")
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise OutOfResources(f"blob store delete failed: {_reason(exc)}") from exc

    def exists(self, key: str) -> bool:
        try:
            return bool(self._container.get_blob_client(key).exists())
        except AzureError as exc:
            raise OutOfResources(f"blob store unavailable: {_reason(exc)}") from exc

    def iter_keys(self, foreign: list[str] | None = None) -> Iterator[str]:
        # Every blob name is a key (open and delete take any): nothing is foreign here.
        try:
            yield from self._container.list_blob_names()
        except AzureError as exc:
            raise OutOfResources(f"blob store listing failed: {_reason(exc)}") from exc

    def check(self, timeout: float = 3.0) -> None:
        """One Get Container Properties request: the account answers and the container is
        there (the identity's data-plane role is proven by the first put)."""
        try:
            self._container.get_container_properties(timeout=timeout)
        except AzureError as exc:
            raise OutOfResources(f"blob store unavailable: {_reason(exc)}") from exc


def _blocks(chunks: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """Re-cut the chunks into blocks of ``size`` bytes; only one block is held at a time."""
    pending = bytearray()
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        start = 0
        while start < view.nbytes:
            if not pending and view.nbytes - start >= size:
                yield bytes(view[start : start + size])  # no detour through the buffer
                start += size
                continue
            take = min(size - len(pending), view.nbytes - start)
            pending += view[start : start + take]
            start += take
            if len(pending) == size:
                yield bytes(pending)
                pending.clear()
    if pending:
        yield bytes(pending)


def _chain(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def _reason(exc: AzureError) -> str:
    """The service's error code as the service names it (``Md5Mismatch``): the SDK's enum
    member would print as ``StorageErrorCode.MD5_MISMATCH``."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code)) if code else type(exc).__name__


def _summary(exc: AzureError) -> str:
    """One line for an error that stops the start: the service's error code and the first
    line of its message. The SDK's text of a refused request runs to a dozen lines (request
    id, time, the error's XML body repeated), which came out as that many lines of the
    start's one-line answer and as that many records in a log collector that splits lines."""
    first = (str(exc).strip().splitlines() or [""])[0].strip()
    code = getattr(exc, "error_code", None)
    if not code:
        return first or type(exc).__name__
    name = str(getattr(code, "value", code))
    return f"{name} ({first})" if first and first != name else name


class _RangeReader(io.RawIOBase):
    """The SDK's range iterator as a raw stream; SDK errors become OutOfResources."""

    def __init__(self, ranges: Iterator[bytes]) -> None:
        self._ranges = ranges
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current:
            try:
                data = next(self._ranges, None)
            except AzureError as exc:
                raise OutOfResources(f"blob store read failed: {_reason(exc)}") from exc
            if data is None:
                return 0
            self._current = memoryview(data)
        count = min(len(buffer), self._current.nbytes)
        buffer[:count] = self._current[:count]
        self._current = self._current[count:]
        return count
