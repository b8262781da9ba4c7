"""Fetch an image URL for a client, guarded against server-side request forgery.

A client's `image_url` makes the router open a connection on its behalf, from inside the
network it runs in. So, unless the config allows a network by name: only http(s); the host is
resolved here and every address it resolves to must be public (no private, loopback,
link-local, shared, multicast or reserved address, IPv4-mapped ones included); the connection
goes to the address that was checked (the URL's host is kept for `Host` and TLS, so a second DNS
answer cannot swap in another address); redirects are followed by hand, each hop checked the
same way; the body is read as a stream and dropped once it passes the byte limit; the whole
fetch, redirects included, has one deadline. The environment's proxies are not used: a proxy
would make the connection somewhere the checks never saw.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urljoin

import httpx

from serving.config.deployment import ImageInputs

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(Exception):
    """The URL was refused or could not be fetched; the message is safe to show the client."""


def _address_allowed(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in allowed):
        return True
    return address.is_global and not address.is_multicast


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchError(f"The image URL's host `{host}` could not be resolved.") from None
    # A scoped IPv6 address ("fe80::1%eth0") is link-local anyway; the scope is dropped.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0])
                              for info in infos))


async def _checked_target(url: httpx.URL, allowed: Sequence[IPNetwork]) -> IPAddress:
    """The address to connect to for `url`, once every address of its host passed."""
    if url.scheme not in ("http", "https"):
        raise FetchError("Only http, https and data image URLs are accepted.")
    if not url.host:
        raise FetchError("The image URL has no host.")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await _resolve(url.host, port)
    if not addresses:
        raise FetchError(f"The image URL's host `{url.host}` could not be resolved.")
    for address in addresses:
        if not _address_allowed(address, allowed):
            # Every address, not just the first: which one a client library picks is not ours.
            raise FetchError("The image URL points to an address that may not be fetched "
                             "(private, loopback, link-local or reserved).")
    return addresses[0]


async def _get_once(client: httpx.AsyncClient, url: httpx.URL, address: IPAddress,
                    max_bytes: int) -> tuple[int, str | None, bytes]:
    """GET `url` from `address`: (status, Location or None, body up to `max_bytes`)."""
    host_header = url.netloc.decode("ascii")
    pinned = url.copy_with(host=str(address))
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    request = client.build_request("GET", pinned, headers={"Host": host_header},
                                   extensions=extensions)
    response = await client.send(request, stream=True)
    try:
        if response.status_code in _REDIRECTS:
            return response.status_code, response.headers.get("location"), b""
        if response.status_code != 200:
            return response.status_code, None, b""
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"The image is larger than {max_bytes} bytes.")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"The image is larger than {max_bytes} bytes.")
        return 200, None, bytes(body)
    finally:
        await response.aclose()


async def fetch_image(url: str, limits: ImageInputs) -> bytes:
    """The bytes at `url`, or FetchError saying (safely) why not."""
    allowed = list(limits.allow_networks)
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise FetchError("The image URL is not a valid URL.") from None
    timeout = httpx.Timeout(limits.fetch_timeout_s)
    try:
        async with asyncio.timeout(limits.fetch_timeout_s), httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False,
            headers={"Accept": "image/*"},
        ) as client:
            for _ in range(limits.max_redirects + 1):
                address = await _checked_target(current, allowed)
                status, location, body = await _get_once(client, current, address,
                                                         limits.max_image_bytes)
                if status == 200:
                    return body
                if location is None:
                    raise FetchError(f"Fetching the image URL failed with HTTP {status}.")
                try:
                    current = httpx.URL(urljoin(str(current), location))
                except (httpx.InvalidURL, ValueError):
                    raise FetchError("The image URL redirected to an invalid URL.") from None
            raise FetchError(f"The image URL redirected more than {limits.max_redirects} "
                             "times.")
    except TimeoutError:
        raise FetchError(f"Fetching the image URL took longer than {limits.fetch_timeout_s:g} "
                         "s.") from None
    except httpx.HTTPError as e:
        raise FetchError(f"Fetching the image URL failed: {type(e).__name__}.") from None
