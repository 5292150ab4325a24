"""The control channel between the site and a sandbox child: one header, some file descriptors.

The parent holds one end of a unix stream socket pair, the child the other as its stdin
(`stdin_socket`). A message is a 4-byte big-endian length, then that many header bytes (at
most `MAX_HEADER`), with the file descriptors riding on the first bytes (SCM_RIGHTS). The
child gets data only through what it is handed here: never a path of the site's.

Must never: pass a path, a secret or an fd the caller did not name; accept a header over
`MAX_HEADER` or more descriptors than the receiver asked for (those it got are closed).
"""

from __future__ import annotations

import os
import socket
import struct

from policies.contract.errors import MedsyftError

#: The largest header either side sends or accepts.
MAX_HEADER = 1 << 20
_LENGTH = struct.Struct("!I")


class ChannelError(MedsyftError, ValueError):
    """A message that breaks the channel's framing (too long, too many descriptors)."""


def send(sock: socket.socket, header: bytes, fds: list[int]) -> None:
    """Send one message: `header` (at most `MAX_HEADER` bytes) and `fds` (duplicated into
    the receiver; the caller keeps and closes its own)."""
    if len(header) > MAX_HEADER:
        raise ChannelError(f"header of {len(header)} bytes is over {MAX_HEADER}")
    frame = _LENGTH.pack(len(header)) + header
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 16))
        if not chunk:
            raise EOFError("the channel closed in the middle of a message")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def receive(sock: socket.socket, max_fds: int = 8) -> tuple[bytes, list[int]]:
    """The next message (child side): `(header, fds)`. Raises `EOFError` when the other end
    closed before a message, `ChannelError` on a malformed one."""
    data, fds, flags, _ = socket.recv_fds(sock, _LENGTH.size, max_fds,
                                          socket.MSG_CMSG_CLOEXEC)
    try:
        if not data:
            raise EOFError("the channel closed")
        if flags & socket.MSG_CTRUNC:
            raise ChannelError(f"more than {max_fds} descriptors were sent")
        if len(data) < _LENGTH.size:
            data += _recv_exactly(sock, _LENGTH.size - len(data))
        (length,) = _LENGTH.unpack(data)
        if length > MAX_HEADER:
            raise ChannelError(f"header of {length} bytes is over {MAX_HEADER}")
        return _recv_exactly(sock, length), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def stdin_socket() -> socket.socket:
    """The child's end of the channel: its stdin, which the launcher made a socket."""
    return socket.socket(fileno=0)
