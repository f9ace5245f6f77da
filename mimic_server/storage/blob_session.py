"""The Blob Storage client's ``requests`` session, whose puts go to urllib3 without requests'
own layers.

Why: against Azurite on loopback, a 40 KB put cost the server 2.3-2.6 ms of CPU through the
SDK, and about a quarter of it was ``requests`` around urllib3: building and merging a
``Request`` into a ``PreparedRequest`` (URL re-parsing and re-quoting, header checks, the
session's settings merged in), the adapter's look-ups, the cookie jar parsing every response
for ``Set-Cookie``, the hooks. The Azure SDK has already done every part of that job that a
blob request needs: the URL is built and quoted, the headers are set and signed, the body is
in memory, redirects and retries are its own policies' (docs/benchmarks.md, "The blob put
without requests' own layers").

What takes the short way: a request whose body is bytes, with no proxy, no client certificate,
no cookies, auth or hooks of requests' own, no redirect to follow, not streamed, verified as
the session was made to verify: every put the store makes (``upload_blob``, ``stage_block``,
``commit_block_list``). Everything else (reads, which the SDK streams; deletes, listings) takes
requests' own path. The short way keeps what matters of requests' path:

- the connection pool, and its TLS settings, are the adapter's own: the pool is found with the
  adapter's public hooks (``get_connection_with_tls_context``, ``cert_verify``), so both paths
  share one pool and verify the service against the same CA bundle;
- what it raises is what ``HTTPAdapter.send`` raises for the same fault (``ConnectionError``,
  ``ReadTimeout``, ``SSLError``, ``InvalidHeader``, urllib3's connect errors as they are), so
  azure-core's transport maps it to the same Azure error and the SDK's retry policy retries
  the same faults;
- the answer is a ``requests.Response`` read to its end (its connection back in the pool), as
  ``Session.send`` returns it when not streaming.

It leaves out the session's default headers (the SDK sends its own User-Agent and Accept; no
``Accept-Encoding``, so the service answers uncompressed) and the cookie jar (the Blob service
sets no cookies). Verified on requests 2.34 and urllib3 2.8
(``tests/storage/test_blob_session.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers
from urllib3.exceptions import ClosedPoolError, ProtocolError, ReadTimeoutError
from urllib3.exceptions import InvalidHeader as Urllib3InvalidHeader
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util import Timeout
from urllib3.util.retry import Retry


class BlobSession(requests.Session):
    """A session with one adapter for both schemes, whose simple requests skip its layers."""

    def __init__(self, connections: int, verify: str | bool) -> None:
        super().__init__()
        #: Set by the caller where the environment configures a proxy or netrc: then every
        #: request takes requests' way, which consults the environment.
        self.trust_env = False
        self.verify = verify
        self.adapter = HTTPAdapter(
            pool_connections=4, pool_maxsize=connections,
            # urllib3's retries off: the SDK's retry policy is the one that retries.
            max_retries=Retry(total=False, redirect=False, raise_on_status=False),
        )
        for scheme in ("https://", "http://"):
            self.mount(scheme, self.adapter)

    def request(  # type: ignore[override]
        self,
        method: str,
        url: str,
        params: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        cookies: Any = None,
        files: Any = None,
        auth: Any = None,
        timeout: Any = None,
        allow_redirects: bool = True,
        proxies: Any = None,
        hooks: Any = None,
        stream: bool | None = None,
        verify: Any = None,
        cert: Any = None,
        json: Any = None,
    ) -> requests.Response:
        if (
            isinstance(data, bytes) and headers is not None and not allow_redirects
            and not stream and not proxies and verify == self.verify and not self.trust_env
            and params is None and cookies is None and files is None and auth is None
            and hooks is None and cert is None and json is None and not self.cookies
        ):
            return self._send_direct(method, url, data, headers, timeout)
        return super().request(
            method, url, params=params, data=data, headers=headers, cookies=cookies,
            files=files, auth=auth, timeout=timeout, allow_redirects=allow_redirects,
            proxies=proxies, hooks=hooks, stream=stream, verify=verify, cert=cert, json=json,
        )

    def _send_direct(self, method: str, url: str, body: bytes, headers: Mapping[str, str],
                     timeout: Any) -> requests.Response:
        """Send on the adapter's pool as ``HTTPAdapter.send`` does; read the whole answer."""
        adapter, verify = self.adapter, self.verify
        request = PreparedRequest()
        request.method = method.upper()
        request.url = url
        request.headers = CaseInsensitiveDict(headers)
        request.body = body
        pool = adapter.get_connection_with_tls_context(request, verify)
        adapter.cert_verify(pool, url, verify, None)
        if isinstance(timeout, tuple):
            timeout = Timeout(connect=timeout[0], read=timeout[1])
        elif not isinstance(timeout, Timeout):
            timeout = Timeout(connect=timeout, read=timeout)
        try:
            answer = pool.urlopen(
                method=request.method, url=request.path_url, body=body,
                headers=request.headers, redirect=False, assert_same_host=False,
                preload_content=False, decode_content=False, retries=adapter.max_retries,
                timeout=timeout, chunked=False,
            )
        except (ProtocolError, OSError, ClosedPoolError) as exc:
            raise requests.ConnectionError(exc, request=request) from exc
        except Urllib3SSLError as exc:
            raise requests.exceptions.SSLError(exc, request=request) from exc
        except ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc, request=request) from exc
        except Urllib3InvalidHeader as exc:
            raise requests.exceptions.InvalidHeader(exc, request=request) from exc
        response = requests.Response()
        response.status_code = answer.status
        response.headers = CaseInsensitiveDict(answer.headers)
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = answer
        response.reason = answer.reason
        response.url = url
        response.request = request
        response.connection = adapter
        response.content  # noqa: B018 - read to the end: the connection goes back to the pool
        return response
