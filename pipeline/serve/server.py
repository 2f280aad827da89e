"""The HTTP server of ``folkrnn serve``: the standard library's ``ThreadingHTTPServer``.

One local user, on 127.0.0.1 by default: the standard library's server is enough, and the command
needs no web framework. Each request runs in a thread of its own (a tune's audio can be made while
a search is answered); ``routes.App.route`` makes the answer, this module sends it:

* only GET and HEAD; a query's last value of each name counts;
* a file (audio, MIDI, PDF) is sent with byte ranges (an ``<audio>`` element seeks with them);
* every answer forbids scripts, framing and outside resources (Content-Security-Policy): the
  pages use none, so even markup slipped into a title could not run;
* on a loopback address, a request whose Host is not a loopback name is refused, so a web page
  elsewhere cannot reach the server through a DNS name pointed at 127.0.0.1;
* an unexpected error is a 500 page of one line (and one line on stderr), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from folkrnn.pipeline.serve.routes import App, Response

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "media-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
RANGE = re.compile(r"bytes=(\d*)-(\d*)")
CHUNK = 1 << 16


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


class Handler(BaseHTTPRequestHandler):
    server_version = "folkrnn"
    app: App  # set on the subclass made for each server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the standard library's name
        pass  # a local app: no access log

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.answer(send_body=False)

    def answer(self, send_body: bool) -> None:
        parts = urlsplit(self.path)
        try:
            response = self.response(parts.path, parts.query)
            if response.file is not None:
                self.send_file(response, send_body)
            else:
                self.send(response, response.body, send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (it stops an audio download it does not need)
        except Exception as err:  # noqa: BLE001 - sending failed half-way: one line on stderr
            print(f"folkrnn serve: error: {type(err).__name__} sending {parts.path}: {err}", file=sys.stderr)

    def response(self, path: str, query_text: str) -> Response:
        """The app's answer; a bug is a one-line 500 page and one line on stderr, never a traceback."""
        if not self.host_allowed():
            return self.app.error(403, "this server answers only requests for localhost or 127.0.0.1")
        try:
            return self.app.route(path, dict(parse_qsl(query_text, keep_blank_values=True)))
        except Exception as err:  # noqa: BLE001
            detail = " ".join(str(err).split())[:300]
            print(f"folkrnn serve: error: unexpected {type(err).__name__} on {path}: {detail}", file=sys.stderr)
            return self.app.error(500, f"unexpected {type(err).__name__}: {detail} (a bug: please report it with "
                                       "the address of this page)")

    def host_allowed(self) -> bool:
        if not is_loopback(self.server.server_address[0]):
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return not host or name in LOOPBACK_NAMES or is_loopback(name)

    def send(self, response: Response, body: bytes, send_body: bool, status: int | None = None,
             extra: dict[str, str] | None = None) -> None:
        self.send_response(status or response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **response.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_file(self, response: Response, send_body: bool) -> None:
        """A file, whole or the one byte range asked for (``Range: bytes=A-B``)."""
        size = os.path.getsize(response.file)
        first, last, status = 0, size - 1, 200
        match = RANGE.fullmatch(self.headers.get("Range", "").strip())
        if match and (match.group(1) or match.group(2)):
            if match.group(1):
                first = int(match.group(1))
                last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # the last N bytes
                first = max(0, size - int(match.group(2)))
            if first > last or first >= size:
                self.send(Response(416, "text/plain"), b"", send_body, extra={"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        for name, value in {**SECURITY_HEADERS, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if not send_body:
            return
        with open(response.file, "rb") as handle:
            handle.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a request still running does not keep the command from stopping

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 - the standard library's signature
        kind, err = sys.exc_info()[:2]
        if kind in (BrokenPipeError, ConnectionResetError):
            return
        print(f"folkrnn serve: error: {getattr(kind, '__name__', kind)} in a request: {err}", file=sys.stderr)


def make_server(app: App, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server for ``app`` bound to ``host:port`` (port 0: a free port; ``server_address`` says
    which), not yet serving: call ``serve_forever``."""
    handler = type("FolkrnnHandler", (Handler,), {"app": app})
    server_class = Server
    if ":" in host:  # an IPv6 address such as ::1
        server_class = type("Server6", (Server,), {"address_family": socket.AF_INET6})
    return server_class((host.strip("[]"), port), handler)


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"
