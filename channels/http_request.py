"""One HTTP request prepared as ``requests.Session`` would, without what a delivery never uses.

``Session.request`` rebuilds for every post what is the same for all of them: a new cookie jar merged
from the session's, the session's headers, params, auth and hooks merged in, the URL parsed and
quoted again; ``Session.send`` then looks for proxies, times the exchange, runs hooks and stores any
``Set-Cookie`` in the session's jar. At 256 threads that was about a sixth of the worker's CPU per
job. ``prepare_request`` runs requests' own ``PreparedRequest`` steps (the same URL checks and
quoting, header validation, body and Content-Length, Basic auth from the URL's userinfo) and the
caller hands the result to the session's adapter:

- a URL's prepared form is cached (it depends on the URL string alone);
- headers: the given ones over the session's defaults, case-insensitively, as the session merges them;
- no cookies, sent or kept. One session serves every tenant: a cookie one tenant's receiver sets must
  not travel with another tenant's alert to the same host;
- no proxies (``HttpClient`` ignores the environment's: a proxy would bypass the address guard).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from requests import PreparedRequest
from requests.structures import CaseInsensitiveDict

URL_CACHE_SIZE = 4096  # destinations; a URL that does not prepare is not cached (it raises each time)


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def prepared_url(url: str) -> str:
    """``url`` checked, IDNA-encoded and quoted as requests sends it (InvalidURL, MissingSchema...)."""
    request = PreparedRequest()
    request.prepare_url(url, None)
    assert request.url is not None
    return request.url


def prepare_request(
    method: str, url: str, body: bytes, headers: Mapping[str, str], defaults: Mapping[str, str | bytes]
) -> PreparedRequest:
    """The request ``Session.request(method, url, data=body, headers=headers)`` would send, minus
    the session's cookies; ``defaults``: the session's headers."""
    merged: CaseInsensitiveDict[str | bytes] = CaseInsensitiveDict(defaults)
    merged.update(headers)
    request = PreparedRequest()
    request.prepare_method(method)
    request.url = prepared_url(url)
    request.prepare_headers({name: value for name, value in merged.items() if value is not None})
    request.prepare_body(body, None)
    request.prepare_auth(None, request.url)  # user:password@ in the URL becomes Basic auth, as before
    return request
