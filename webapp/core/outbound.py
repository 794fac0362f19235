"""Outbound HTTP to URLs that users give (LoRA downloads, webhook deliveries): which addresses the server may
reach, a connection that goes only to the address vetted, and a watchdog that bounds a request's total time.

A host is reached only when every address it resolves to is public (one private answer among public ones
could be picked by the next lookup), and the socket then connects to that vetted address itself, so a
second DNS answer (rebinding) cannot point it elsewhere. Callers turn the failures into their own errors.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # on a NAT64 network these reach the embedded IPv4 address


class AddressNotPublic(Exception):
    """The host resolves to no address, or to one that is not public."""


def is_public_address(*, address: str) -> bool:
    """Whether a socket to `address` reaches the public internet, and only it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # getaddrinfo may append an IPv6 scope id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # a socket to ::ffff:a.b.c.d reaches a.b.c.d itself
    candidates = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        # 6to4 and NAT64 forms wrap an IPv4 address and are only as public as the address they wrap.
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else ip.sixtofour
        candidates += [embedded] if embedded else []
    return all(
        c.is_global
        and not (
            c.is_multicast or c.is_reserved or c.is_loopback or c.is_link_local or c.is_private or c.is_unspecified
        )
        for c in candidates
    )


def public_address(*, host: str, port: int) -> str:
    """One address of `host` to connect to, once every address it resolves to has proved public.

    Raises OSError or UnicodeError when the host does not resolve, AddressNotPublic when an address is not
    public."""
    # getaddrinfo takes no timeout; the resolver's own limits bound it.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not all(is_public_address(address=a) for a in addresses):
        raise AddressNotPublic(host)
    return addresses[0]


def _cut_off(*, conn: http.client.HTTPConnection) -> None:
    sock = conn.sock
    if sock is not None:
        try:
            # The plain socket's shutdown (not SSLSocket's) wakes a blocked read without touching TLS state.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def watchdog(*, conn: http.client.HTTPConnection, deadline: float) -> threading.Timer:
    """A started timer that shuts conn's socket at `deadline` (time.monotonic()); cancel it when done.
    Per-read timeouts don't bound a server that drips a byte at a time; shutting the socket does."""
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), lambda: _cut_off(conn=conn))
    timer.daemon = True
    timer.start()
    return timer


class VettedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address vetted beforehand, so a second DNS answer (rebinding) can't redirect the socket."""

    def __init__(self, host: str, *, address: str, port: int, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port=port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = raw  # visible to a watchdog and to close() while the handshake runs
        # SNI and certificate checks use the host name, so the vetted IP must still prove it is that host.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)
