"""Remote image URLs (SSRF): off by default; when on, never a connection to loopback, private,
link-local, multicast, reserved or unspecified addresses, whatever the URL spells, whatever DNS
answers and wherever a redirect points; size and time caps on what is fetched.

A canary socket listens on 127.0.0.1 and counts every TCP connection that reaches it (a
completed handshake waits in its accept queue even if nobody serves it). An image server on
127.0.0.2, the one address a test allows through ``remote_allowed_networks``, stands in for a
public host: it serves images and PDFs, redirects, stalls and floods on request.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import certifi
import pytest
from PIL import Image

from mlx_router.errors import InvalidRequest, PayloadTooLarge, RouterError
from mlx_router.media import MediaLimits, load_images, remote
from mlx_router.media.remote import IPAddress, address_allowed, is_public
from tests.fixtures.media_files import pdf

PARAM = "messages[0].content[1].image_url"
SERVER_IP = "127.0.0.2"


class Canary:
    """A listening socket nobody serves; ``connections()`` counts the handshakes that reached it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.count = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return self.count
            conn.close()
            self.count += 1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    png = b""
    seen: ClassVar[list[tuple[str, str | None]]] = []
    flood_sent = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        type(self).seen.append((url.path, self.headers.get("Host")))
        if url.path == "/image.png":
            self._send(200, self.png, {"Content-Type": "image/png"})
        elif url.path == "/doc.pdf":
            self._send(200, pdf(pages=2), {"Content-Type": "application/pdf"})
        elif url.path == "/redirect":
            self._send(302, headers={"Location": query["to"]})
        elif url.path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif url.path == "/declared-huge":
            self._send(200, b"x" * 10, {"Content-Length": str(10**12)})
        elif url.path == "/flood":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n%s\r\n" % (65536, b"\0" * 65536)
            try:
                for _ in range(2000):  # 131 MB if nobody stops reading
                    self.wfile.write(chunk)
                    type(self).flood_sent += 65536
            except OSError:
                pass
        elif url.path == "/stall":
            time.sleep(3)
            self._send(200, self.png)
        elif url.path == "/gzip":
            self._send(200, b"\x1f\x8b" + b"\0" * 20, {"Content-Encoding": "gzip"})
        else:
            self._send(404, b"no")


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up (the fetch gave up by design) is no error worth printing."""


@pytest.fixture
def canary() -> Iterator[Canary]:
    trap = Canary()
    yield trap
    trap.sock.close()


@pytest.fixture
def server() -> Iterator[str]:
    """``http://127.0.0.2:<port>`` of the image server; ``Handler.seen`` lists what it served."""
    png = io.BytesIO()
    Image.new("RGB", (32, 16), (0, 0, 255)).save(png, "PNG")
    Handler.png, Handler.seen, Handler.flood_sent = png.getvalue(), [], 0
    httpd = QuietServer((SERVER_IP, 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://{SERVER_IP}:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


ON = MediaLimits(
    allow_remote_urls=True, remote_allowed_networks=(ipaddress.ip_network(f"{SERVER_IP}/32"),), remote_timeout=2.0
)


def fetch(url: str, limits: MediaLimits = ON) -> tuple[int, ...]:
    return asyncio.run(load_images([(PARAM, url)], limits)).counts


def refused(url: str, limits: MediaLimits = ON, *, quick: bool = True) -> RouterError:
    started = time.perf_counter()
    with pytest.raises(RouterError) as info:
        fetch(url, limits)
    assert info.value.param == PARAM and PARAM in info.value.message
    if quick:  # refused at once, not after waiting out remote_timeout (2 s)
        assert time.perf_counter() - started < 1.5
    return info.value


def fake_resolver(monkeypatch: pytest.MonkeyPatch, *answers: list[str]) -> list[str]:
    """Make ``remote.resolve_host`` give ``answers[i]`` on call ``i`` (the last one repeats); returns the calls."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in answers[min(len(calls), len(answers)) - 1]]

    monkeypatch.setattr(remote, "resolve_host", resolve)
    return calls


# --------------------------------------------------------------------------- refused without a connection


def test_remote_urls_are_off_by_default(canary: Canary) -> None:
    error = refused(f"http://127.0.0.1:{canary.port}/a.png", MediaLimits())
    assert isinstance(error, InvalidRequest) and "media.allow_remote_urls" in error.message
    refused(f"http://{SERVER_IP}:{canary.port}/a.png", MediaLimits())
    assert canary.connections() == 0


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped loopback
        "[::ffff:7f00:1]",
        "0.0.0.0",  # unspecified: Linux connects it to loopback
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f000001",
        "127.1",
        "017700000001",  # octal
        "[::]",
    ],
)
def test_loopback_in_any_spelling_gets_no_connection(canary: Canary, host: str) -> None:
    for scheme in ("http", "https"):
        error = refused(f"{scheme}://{host}:{canary.port}/image.png")
        assert isinstance(error, InvalidRequest) and "non-public" in error.message
    assert canary.connections() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://[fd00:ec2::254]/latest/meta-data/",  # its IPv6 twin (unique local)
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://100.64.0.1/a.png",  # carrier-grade NAT
        "http://224.0.0.1/a.png",  # multicast
        "http://240.0.0.1/a.png",  # reserved
        "http://[fe80::1]/a.png",
        "http://[ff02::1]/a.png",
        "http://[64:ff9b::7f00:1]/a.png",  # NAT64 of 127.0.0.1
        "http://[2002:7f00:1::]/a.png",  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(url: str) -> None:
    assert "non-public" in refused(url).message


def test_public_looking_name_resolving_to_loopback(canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_resolver(monkeypatch, ["127.0.0.1"])
    refused(f"http://images.example.com:{canary.port}/cat.png")
    assert calls == ["images.example.com"]
    fake_resolver(monkeypatch, ["93.184.215.14", "127.0.0.1"])  # one bad answer is enough
    refused(f"http://images.example.com:{canary.port}/cat.png")
    assert canary.connections() == 0


def test_redirect_to_loopback_gets_no_connection(canary: Canary, server: str) -> None:
    for target in (
        f"http://127.0.0.1:{canary.port}/x.png",
        f"http://localhost:{canary.port}/x.png",
        f"http://[::ffff:127.0.0.1]:{canary.port}/x.png",
        "http://169.254.169.254/latest/meta-data/",
    ):
        error = refused(f"{server}/redirect?to={target}")
        assert "non-public" in error.message
    assert [path for path, _ in Handler.seen] == ["/redirect"] * 4  # the allowed first hop ran
    assert canary.connections() == 0


def test_redirect_to_another_scheme_is_refused(server: str) -> None:
    for target in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:70/"):
        assert "http(s) URL" in refused(f"{server}/redirect?to={target}").message


# --------------------------------------------------------------------------- allowed fetches


def test_allowed_fetch_sends_the_original_host(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.rsplit(":", 1)[1]
    calls = fake_resolver(monkeypatch, [SERVER_IP])
    batch = asyncio.run(load_images([(PARAM, f"http://images.example:{port}/image.png")], ON))
    assert batch.counts == (1,) and Image.open(io.BytesIO(batch.images[0])).size == (32, 16)
    assert Handler.seen == [("/image.png", f"images.example:{port}")]
    assert calls == ["images.example"]


def test_dns_rebinding_cannot_move_the_connection(server: str, canary: Canary, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once per hop and the checked address is the one connected to: a
    second, different answer (loopback) is never asked for, let alone used."""
    port = server.rsplit(":", 1)[1]
    calls = fake_resolver(monkeypatch, [SERVER_IP], ["127.0.0.1"])
    assert fetch(f"http://rebind.example:{port}/image.png") == (1,)
    assert calls == ["rebind.example"] and [path for path, _ in Handler.seen] == ["/image.png"]
    assert canary.connections() == 0


def test_redirects_are_followed_and_each_hop_checked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.rsplit(":", 1)[1]
    calls = fake_resolver(monkeypatch, [SERVER_IP])
    assert fetch(f"http://a.example:{port}/redirect?to=http://b.example:{port}/image.png") == (1,)
    assert calls == ["a.example", "b.example"]
    assert Handler.seen == [("/redirect", f"a.example:{port}"), ("/image.png", f"b.example:{port}")]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path, list[str | None]]]:
    """An HTTPS image server on 127.0.0.2 with a self-signed certificate for ``images.example``:
    its port, the certificate file and the server names (SNI) its clients sent."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True,
    )
    names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc]
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    Handler.png, Handler.seen = png.getvalue(), []
    httpd = QuietServer((SERVER_IP, 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd.server_address[1], cert, names
    httpd.shutdown()
    httpd.server_close()


def test_https_sends_the_name_and_verifies_the_certificate_against_it(
    tls_server: tuple[int, Path, list[str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to the checked address, TLS still speaks to the name: the server gets it as
    SNI and Host, and the certificate is verified for it (an untrusted one is refused)."""
    port, cert, names = tls_server
    fake_resolver(monkeypatch, [SERVER_IP])
    error = refused(f"https://images.example:{port}/image.png")
    assert "could not be fetched" in error.message and names == ["images.example"] and Handler.seen == []
    monkeypatch.setattr(certifi, "where", lambda: str(cert))  # trust the test certificate
    assert fetch(f"https://images.example:{port}/image.png") == (1,)
    assert names[-1] == "images.example" and Handler.seen == [("/image.png", f"images.example:{port}")]


def test_a_remote_pdf_is_rendered(server: str) -> None:
    assert fetch(f"{server}/doc.pdf") == (2,)


# --------------------------------------------------------------------------- caps


def test_declared_size_beyond_the_cap_is_413(server: str) -> None:
    error = refused(f"{server}/declared-huge")
    assert isinstance(error, PayloadTooLarge) and "media.max_image_bytes" in error.message


def test_reading_stops_at_the_cap(server: str) -> None:
    limits = MediaLimits(**{**ON.__dict__, "max_image_bytes": 1_000_000, "max_pdf_bytes": 1_000_000})
    error = refused(f"{server}/flood", limits)
    assert isinstance(error, PayloadTooLarge)
    time.sleep(0.2)
    assert Handler.flood_sent < 20_000_000  # the server was cut off, far short of its 131 MB


def test_the_deadline_covers_the_whole_fetch(server: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidRequest) as info:
        fetch(f"{server}/stall", MediaLimits(**{**ON.__dict__, "remote_timeout": 0.3}))
    assert "media.remote_timeout" in info.value.message
    assert time.perf_counter() - started < 1.5  # the server stalls for 3 s


@pytest.mark.parametrize(
    ("path", "words"),
    [("/loop", "redirected more than 3 times"), ("/missing", "HTTP 404"), ("/gzip", "compressed")],
)
def test_other_failures_are_400(server: str, path: str, words: str) -> None:
    error = refused(f"{server}{path}")
    assert isinstance(error, InvalidRequest) and words in error.message


def test_an_unresolvable_host_is_400() -> None:
    assert "could not be resolved" in refused("http://no-such-host.invalid/a.png", quick=False).message


# --------------------------------------------------------------------------- the address rules


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),
        ("192.0.0.1", False),
        ("198.18.0.1", False),
        ("224.0.0.251", False),
        ("239.255.255.250", False),
        ("255.255.255.255", False),
        ("0.0.0.0", False),
        ("::", False),
        ("::1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff05::2", False),
        ("2001:db8::1", False),
        ("64:ff9b::a00:1", False),
        ("2002:a00:1::", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


def test_allowed_networks_open_exactly_those_addresses() -> None:
    limits = MediaLimits(remote_allowed_networks=(ipaddress.ip_network("192.168.1.0/24"),))
    assert address_allowed(ipaddress.ip_address("192.168.1.20"), limits)
    assert address_allowed(ipaddress.ip_address("::ffff:192.168.1.20"), limits)
    assert not address_allowed(ipaddress.ip_address("192.168.2.20"), limits)
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"), limits)
