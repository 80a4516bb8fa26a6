"""The token rule, and the headers every answer carries: a plain ASGI middleware (no framework).

- Listening on loopback only, with no token: no authentication. The ``Host`` header must then
  name a loopback host, so a web page elsewhere cannot read the dashboard through DNS
  rebinding (its requests would carry its own host name).
- Anywhere else a token is required (``token_problem`` refuses to start without one), and
  every request, every route, carries it: ``Authorization: Bearer TOKEN``, or the cookie a
  browser gets by opening ``/?token=TOKEN`` once (HttpOnly; a redirect then drops the token
  from the address bar and the history). Anything else is 401.
- Tokens are compared in constant time: ``hmac.compare_digest`` of SHA-256 digests, so not
  even the length leaks. The cookie holds an HMAC of the token, not the token.
- The page is read-only: anything but GET and HEAD is 405 before it reaches a route.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from pbt_mq.core.settings import MIN_TOKEN_CHARS

COOKIE = "pbt_dashboard"
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: reachable from this machine only."""
    name = host.strip().lower().strip("[]")
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_problem(host: str, token: str | None) -> str | None:
    """Why the dashboard may not listen on ``host`` with ``token`` (None: it may)."""
    if token is None:
        if is_loopback(host):
            return None
        return (f"--host {host} is not a loopback address, so anyone who reaches it could read the experiments:"
                " give a token with --token T or PBT_DASHBOARD_TOKEN (e.g. python -c 'import secrets;"
                " print(secrets.token_urlsafe(24))')")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in token):
        return f"--token: expected at least {MIN_TOKEN_CHARS} printable characters, no spaces"
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def _host_name(host_header: str) -> str:
    """The host of a Host header, without the port (``[::1]:8265`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class Guard:
    """Wraps the app: the token rule above, GET/HEAD only, and security headers on every answer."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token_digest = _digest(token) if token else None
        self.cookie = hmac.new(token.encode(), b"pbt-dashboard-cookie/1", hashlib.sha256).hexdigest() if token else ""

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":  # start-up and shut-down, not a request
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket (none is served) never passes unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        path = scope.get("path", "/")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        send = self._with_headers(send, no_store=path == "/" or path.startswith("/api/"))
        if self.token_digest is None:
            if not is_loopback(_host_name(headers.get("host", ""))):
                await _answer(send, 403, "this dashboard serves loopback only (Host header is not a loopback name)")
                return
        else:
            signed_in = self._bearer_ok(headers.get("authorization", "")) or self._cookie_ok(headers.get("cookie", ""))
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = [v for k, v in query if k == "token"]
            valid = bool(given) and hmac.compare_digest(_digest(given[-1]), self.token_digest)
            if given and (valid or signed_in) and scope["method"] in ("GET", "HEAD"):
                # a token in the address leaves it every time (history, screenshots), signed in or not
                rest = urlencode([(k, v) for k, v in query if k != "token"])
                location = "/" + quote(path.lstrip("/")) + (f"?{rest}" if rest else "")  # never //host
                secure = "; Secure" if scope.get("scheme") == "https" else ""
                cookie = [("set-cookie", f"{COOKIE}={self.cookie}; Path=/; HttpOnly; SameSite=Lax{secure}")]
                await _answer(send, 303, "signed in", [("location", location), *(cookie if valid else [])])
                return
            if signed_in:
                return await self._pass(scope, receive, send)
            await _answer(send, 401, "this dashboard needs its token: send 'Authorization: Bearer TOKEN',"
                          " or open /?token=TOKEN once in a browser", [("www-authenticate", 'Bearer realm="pbt"')])
            return
        await self._pass(scope, receive, send)

    async def _pass(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                    send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, "read-only: GET and HEAD only", [("allow", "GET, HEAD")])
            return
        await self.app(scope, receive, send)

    def _bearer_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        return (scheme.lower() == "bearer" and self.token_digest is not None
                and hmac.compare_digest(_digest(value.strip()), self.token_digest))

    def _cookie_ok(self, header: str) -> bool:
        """Ours among the request's cookies, parsed as RFC 6265 says browsers send them: ``name=value`` pairs
        separated by ``;`` (another site's cookie, whatever its syntax or order, changes nothing)."""
        for pair in header.split(";"):
            name, eq, value = pair.strip().partition("=")
            if eq and name.strip() == COOKIE and hmac.compare_digest(_digest(value.strip().strip('"')),
                                                                   _digest(self.cookie)):
                return True
        return False

    @staticmethod
    def _with_headers(send: Callable[[Any], Awaitable[None]], no_store: bool) -> Callable[[Any], Awaitable[None]]:
        extra = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
        if no_store:
            extra.append((b"cache-control", b"no-store"))

        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return wrapped


async def _answer(send: Callable[[Any], Awaitable[None]], status: int, text: str,
                  headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
    body = json.dumps({"error": text} if status >= 400 else {"ok": text}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *[(k.encode(), v.encode("latin-1")) for k, v in headers]]})
    await send({"type": "http.response.body", "body": body})
