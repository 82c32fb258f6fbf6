"""What keeps other web sites out of a demo server running on a person's machine (an ASGI middleware, `Guard`).

A server on 127.0.0.1 is still reachable from the person's own browser, and so from any page it has open:
- DNS rebinding: a site whose name is made to resolve to 127.0.0.1 talks to the server under its own name, with the
  browser's same-origin rules on its side. The server answers only requests whose Host names it (`allowed_hosts`).
- Cross-site requests: any page may open a WebSocket to ws://127.0.0.1:PORT (WebSockets ignore CORS) or post a form
  to it, and so start generations or upload files. Browsers send an Origin header with both; the server refuses a
  WebSocket or a non-GET request whose Origin is not the page's own (scheme, host and port of the Host it came to).
Clients other than browsers (curl, the benchmarks) send no Origin and pass the second check.
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def allowed_hosts(bind: str) -> frozenset[str] | None:
    """The host names a server bound to `bind` answers to: the loopback names (and `bind` itself); None (any) when
    it serves every interface, where the machine's names and addresses are not known in advance."""
    if bind in ANY_ADDRESS:
        return None
    return LOCAL_NAMES | {bind.strip("[]").lower()}


def host_name(host: str) -> str:
    """"127.0.0.1:7860" -> "127.0.0.1", "[::1]:7860" -> "::1", "LocalHost" -> "localhost"."""
    return (urlsplit(f"//{host}").hostname or "").lower()


class Guard:
    """Refuses a request whose Host is not one of `hosts` (None: any), and a WebSocket or non-GET request whose
    Origin is another site's: 403 with the reason (a WebSocket is closed before it is accepted)."""

    def __init__(self, app, hosts: frozenset[str] | None):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        why = self.refusal(scope)
        if why is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008, "reason": why})
        body = why.encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope) -> str | None:
        """Why this request is refused, or None."""
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get(b"host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            return (f"Host {host!r} is not this server's name ({', '.join(sorted(self.hosts))}); start the demo "
                    f"with --host NAME to serve it under another name")
        origin = headers.get(b"origin")
        changes = scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD", "OPTIONS")
        if origin is not None and changes and urlsplit(origin).netloc.lower() != host.lower():
            return f"a request from the page of another site ({origin}) is refused"
        return None
