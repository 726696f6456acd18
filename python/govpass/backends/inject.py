"""Raw-socket injection of generated segments (Linux).

The segments are complete IP packets with valid checksums. They carry the
configured fwmark (SO_MARK) so the interception rules let them through
instead of queueing them again.
"""

from __future__ import annotations

import socket

from govpass.errors import BackendError

SO_MARK = getattr(socket, "SO_MARK", 36)


class RawInjector:
    """Sends IPv4 and IPv6 packets whose headers are already built."""

    def __init__(self, mark: int, ipv6: bool = True) -> None:
        try:
            # IPPROTO_RAW implies IP_HDRINCL (IPv4) / IPV6_HDRINCL (IPv6).
            self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self._v4.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            self._v6: socket.socket | None = None
            if ipv6 and socket.has_ipv6:
                self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
                self._v6.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        except PermissionError as e:
            raise BackendError(
                "cannot open raw sockets with a mark: needs root or CAP_NET_RAW+CAP_NET_ADMIN"
            ) from e
        self.sent = 0
        self.errors = 0

    def fds(self) -> tuple[int, int | None]:
        """The IPv4 and IPv6 (None when off) raw sockets' descriptors, for a
        packet loop outside Python that sends through them."""
        return self._v4.fileno(), (self._v6.fileno() if self._v6 is not None else None)

    def send(self, packet: bytes) -> bool:
        """Sends one packet; False (and counted) when the kernel refused it."""
        try:
            if packet[0] >> 4 == 4:
                self._v4.sendto(packet, (socket.inet_ntop(socket.AF_INET, packet[16:20]), 0))
            elif self._v6 is not None:
                dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
                self._v6.sendto(packet, (dst, 0, 0, 0))
            else:
                self.errors += 1
                return False
        except OSError:
            self.errors += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._v4.close()
        if self._v6 is not None:
            self._v6.close()
