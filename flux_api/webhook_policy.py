"""Where a callback may go: the address policy that keeps callback_url from being a server-side request
forgery.

By default only public addresses are reached. Refused: loopback, private (RFC 1918, IPv6 ULA),
link-local (169.254/16, where cloud metadata lives, and fe80::/10), CGNAT (100.64/10), reserved,
multicast, unspecified, documentation and benchmarking ranges, in IPv4 and IPv6, and in the IPv6 forms
that carry an IPv4 address (IPv4-mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo),
whose IPv4 address is checked as such. `webhook_allow_hosts` lets listed names, addresses or ranges
through anyway (the tests allow 127.0.0.1); `webhook_allow_public = false` leaves only those.

Two checks, both before any connection is opened:
- `check_url`, in the request's path: an IP literal (the legacy forms inet_aton takes, such as
  2130706433 or 127.1, included) in a refused range, or a host outside the allow list when public
  addresses are off: CallbackNotAllowed (422), nothing queued. A name is resolved only at delivery.
- `resolve`, at each delivery attempt: the name is resolved here, every address it resolves to is
  checked (one refused address refuses the lot), and the caller connects to a checked address itself,
  never to the name, so a second resolution (DNS rebinding) cannot swap in another address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Awaitable, Callable

from .errors import CallbackNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
CGNAT = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")

# getaddrinfo(host, port) -> [(family, type, proto, canonname, sockaddr)], as the event loop's
Resolver = Callable[[str, int], Awaitable[list]]


def parse_allow_entry(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    """A webhook_allow_hosts entry: an address or CIDR range (as a network), or a host name (lower case,
    no trailing dot). ValueError naming the entry otherwise."""
    text = entry.strip().lower().rstrip(".")
    try:
        return ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        pass
    if _HOST_NAME.match(text):
        return text
    raise ValueError(f"webhook_allow_hosts entry {entry!r} is neither an IP address, a CIDR range nor a host name")


def ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, if it spells one: IPv4 and IPv6 literals, and the legacy IPv4 forms
    that the C resolver takes as addresses (2130706433, 0x7f.1, 127.1), so they are judged here too."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would reach: IPv4-mapped, NAT64, 6to4, Teredo."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client behind the Teredo relay
    return None


def kind_of(ip: IPAddress) -> str | None:
    """What kind of address `ip` is, as a phrase ("a loopback address"), when a connection to it is refused
    by default; None if it is public."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = kind_of(inner)
        return None if why is None else f"{why} ({inner}, carried inside an IPv6 address)"
    for phrase, test in (("an unspecified address", ip.is_unspecified), ("a loopback address", ip.is_loopback),
                         ("a link-local address", ip.is_link_local), ("a multicast address", ip.is_multicast),
                         ("a CGNAT address (100.64.0.0/10)", ip.version == 4 and ip in CGNAT),
                         ("a private address", ip.is_private), ("a reserved address", ip.is_reserved)):
        if test:
            return phrase
    return None if ip.is_global else "not a globally routable address"


class AddressPolicy:
    def __init__(self, allow_hosts: list[str] = (), allow_public: bool = True, resolver: Resolver | None = None):
        entries = [parse_allow_entry(e) for e in allow_hosts]
        self.names = {e for e in entries if isinstance(e, str)}
        self.networks = [e for e in entries if not isinstance(e, str)]
        self.allow_public = allow_public
        self._resolver = resolver

    @classmethod
    def from_settings(cls, settings, resolver: Resolver | None = None) -> "AddressPolicy":
        return cls(settings.webhook_allow_hosts, settings.webhook_allow_public, resolver)

    def _listed(self, ip: IPAddress) -> bool:
        inner = embedded_ipv4(ip)
        return any(a in net for a in (ip, inner) if a is not None for net in self.networks if a.version == net.version)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be reached, or None if it may."""
        if self._listed(ip):
            return None
        if not self.allow_public:
            return f"{ip} is not in webhook_allow_hosts (only those may be reached)"
        why = kind_of(ip)
        return None if why is None else f"{ip} is {why}, and not in webhook_allow_hosts"

    def check_url(self, host: str) -> None:
        """The request-path check, no network: CallbackNotAllowed for an IP literal this policy refuses, or
        for a name outside the allow list when only the allow list may be reached."""
        ip = ip_literal(host)
        if ip is not None:
            why = self.refusal(ip)
        elif self._name_listed(host) or self.allow_public:
            why = None  # judged by the addresses it resolves to, at delivery
        else:
            why = f"{host} is not in webhook_allow_hosts (only those may be reached)"
        if why:
            raise CallbackNotAllowed(f"callback_url refused: {why}", field="callback_url")

    def _name_listed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.names

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one of them checked; CallbackNotAllowed if any is
        refused (a name that also resolves to a refused address is refused whole), OSError if it does
        not resolve. A name listed in webhook_allow_hosts may resolve to any address."""
        ip = ip_literal(host)
        if ip is not None:
            addresses = [ip]
        else:
            resolver = self._resolver or asyncio.get_running_loop().getaddrinfo
            infos = await resolver(host, port, type=socket.SOCK_STREAM)
            addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
            if not addresses:
                raise OSError(f"{host} resolves to no address")
        if ip is None and self._name_listed(host):
            return [str(a) for a in addresses]
        for a in addresses:
            why = self.refusal(a)
            if why:
                name = f"{host} resolves to {a}, which" if ip is None else str(a)
                raise CallbackNotAllowed(f"callback_url refused: {why.replace(str(a), name, 1)}", field="callback_url")
        return [str(a) for a in addresses]
