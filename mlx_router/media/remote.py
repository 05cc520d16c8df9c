"""Fetching image URLs without turning the server into a proxy into its own network (SSRF).

A URL from a request names a host; the danger is the address it reaches: the cloud metadata
service at 169.254.169.254, an admin page on 127.0.0.1, a printer on the LAN. So every hop,
the first and each redirect, resolves the host once, refuses it unless every address is public
(or inside ``media.remote_allowed_networks``), and then connects to exactly the address it
checked, sending the original name as ``Host`` header and TLS server name (so certificates are
still verified against the name). Resolving again at connect time, as a plain HTTP client
does, would let a DNS server answer "public" to the check and "127.0.0.1" to the connect.

Proxies from the environment are ignored (a proxy would make the check meaningless), the
body is read in pieces and dropped past the size cap, and one deadline covers the whole fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import httpx

from mlx_router import __version__
from mlx_router.errors import InvalidRequest, PayloadTooLarge
from mlx_router.media.limits import MediaLimits

__all__ = ["IPAddress", "address_allowed", "fetch", "is_public", "resolve_host"]

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SCHEMES = ("http", "https")


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to; an IP literal is its own answer."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (6to4, Teredo, NAT64) and may reach through a gateway."""
    found = [address.sixtofour, *(address.teredo or ())]
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [ipv4 for ipv4 in found if ipv4 is not None]


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` (and any IPv4 address inside it) is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return is_public(address.ipv4_mapped)
        if not all(map(is_public, _embedded_ipv4(address))):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def address_allowed(address: IPAddress, limits: MediaLimits) -> bool:
    """Public, or inside one of the operator's ``remote_allowed_networks``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return is_public(address) or any(address in network for network in limits.remote_allowed_networks)


def _target(url: str, param: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL:
        raise InvalidRequest(f"The image URL at {param} is not a valid URL.", param=param) from None
    if target.scheme not in _SCHEMES or not target.host:
        raise InvalidRequest(
            f"The image URL at {param} must be an http(s) URL with a host.", param=param
        )
    return target


async def _checked_address(target: httpx.URL, param: str, limits: MediaLimits) -> IPAddress:
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        addresses = await resolve_host(target.host, port)
    except (OSError, UnicodeError):
        raise InvalidRequest(f"The host of the image URL at {param} could not be resolved.", param=param) from None
    if not addresses or not all(address_allowed(address, limits) for address in addresses):
        logger.warning("refused an image URL at %s: %s resolves to a non-public address", param, target.host)
        raise InvalidRequest(
            f"The image URL at {param} points to a loopback, private, link-local or otherwise "
            "non-public address; such URLs are not fetched (media.remote_allowed_networks).",
            param=param,
        )
    return addresses[0]


async def _read_body(response: httpx.Response, cap: int, param: str) -> bytes:
    if response.status_code != 200:
        raise InvalidRequest(
            f"The image URL at {param} answered HTTP {response.status_code}.", param=param
        )
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise InvalidRequest(
            f"The image URL at {param} answered with a compressed body; serve images uncompressed.",
            param=param,
        )
    too_large = PayloadTooLarge(
        f"The download at {param} is larger than {cap:,} bytes (media.max_image_bytes / media.max_pdf_bytes).",
        param=param,
    )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) > cap:
            raise too_large
    return bytes(body)


async def fetch(url: str, param: str, limits: MediaLimits) -> bytes:
    """The body of an http(s) URL, fetched under the rules above; 400/413 when refused."""
    if not limits.allow_remote_urls:
        raise InvalidRequest(
            f"The image at {param} is a URL, and this server does not fetch URLs "
            "(media.allow_remote_urls is off); send the image as a base64 data: URI.",
            param=param,
        )
    target = _target(url, param)
    cap = max(limits.max_image_bytes, limits.max_pdf_bytes)
    client = httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(limits.remote_timeout, connect=limits.remote_connect_timeout),
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={
            "User-Agent": f"mlx-router/{__version__}",
            "Accept": "image/*, application/pdf",
            "Accept-Encoding": "identity",
        },
    )
    try:
        async with client, asyncio.timeout(limits.remote_timeout):
            for _ in range(limits.remote_max_redirects + 1):
                address = await _checked_address(target, param, limits)
                request = client.build_request(
                    "GET",
                    target.copy_with(host=str(address), fragment=None),
                    headers={"Host": target.netloc.decode("ascii")},
                    extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
                )
                response = await client.send(request, stream=True)
                try:
                    if not response.has_redirect_location:
                        return await _read_body(response, cap, param)
                    target = _target(str(target.join(response.headers["location"])), param)
                finally:
                    await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise InvalidRequest(
            f"The image URL at {param} did not answer within {limits.remote_timeout:g} s "
            "(media.remote_timeout).",
            param=param,
        ) from None
    except httpx.HTTPError as exc:
        logger.info("fetching the image URL at %s failed: %r", param, exc)
        raise InvalidRequest(
            f"The image URL at {param} could not be fetched (a network or HTTP protocol error).", param=param
        ) from None
    raise InvalidRequest(
        f"The image URL at {param} redirected more than {limits.remote_max_redirects} times "
        "(media.remote_max_redirects).",
        param=param,
    )
