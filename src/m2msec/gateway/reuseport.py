"""A classic BPF program that pins a ``--workers`` SO_REUSEPORT group's choice of socket to the group's first N.

Without it the kernel picks a socket of the group by a hash of the source address and port taken modulo the
group's *current* size: a socket of the same user bound later on the same port with ``SO_REUSEPORT`` (another
service, a second copy of a tool) silently joins the group, takes a share of new TCP connections and datagrams,
and, as the modulus changes, sends most DTLS peers to a worker that does not hold their association.

:func:`pin_group` attaches (``SO_ATTACH_REUSEPORT_CBPF``) a program that hashes the source address and port
(read from the IP and TCP/UDP headers, with a random seed per gateway) modulo the supervisor's own socket count:
a socket that joins later has an index no result reaches. It guards against a careless process, not a hostile
one of the same user (which may attach its own program, or read the key store anyway).
"""

from __future__ import annotations

import ctypes
import secrets
import socket
import struct

__all__ = ["pin_group", "program"]

#: setsockopt(2) option (asm-generic/socket.h)
SO_ATTACH_REUSEPORT_CBPF = 51
#: classic BPF base of loads relative to the network (IP) header (linux/filter.h)
_NET = -0x100000 & 0xFFFFFFFF
#: classic BPF opcodes (linux/bpf_common.h)
_LD_W_ABS, _LD_H_ABS, _LD_H_IND, _LDX_B_MSH = 0x20, 0x28, 0x48, 0xB1
_TAX, _XOR_X, _XOR_K, _MUL_K, _RSH_K, _MOD_K, _RET_A = 0x07, 0xAC, 0xA4, 0x24, 0x74, 0x94, 0x16
_GOLDEN = 0x9E3779B1  # Fibonacci hashing: the high bits of the product mix every input bit


def program(family: socket.AddressFamily, count: int, seed: int) -> list[tuple[int, int, int, int]]:
    """The instructions (code, jt, jf, k): hash(source address, source port, seed) mod ``count``."""
    if family == socket.AF_INET:
        source = [(_LDX_B_MSH, 0, 0, _NET),  # X = IP header length
                  (_LD_H_IND, 0, 0, _NET), (_TAX, 0, 0, 0),  # X = source port (first field of TCP and UDP)
                  (_LD_W_ABS, 0, 0, _NET + 12), (_XOR_X, 0, 0, 0)]  # A = source address ^ port
    else:  # IPv6: the 4 words of the source address, the port right after the fixed header
        source = [(_LD_H_ABS, 0, 0, _NET + 40), (_TAX, 0, 0, 0)]
        for offset in (8, 12, 16, 20):
            source += [(_LD_W_ABS, 0, 0, _NET + offset), (_XOR_X, 0, 0, 0), (_TAX, 0, 0, 0)]
    return [*source, (_XOR_K, 0, 0, seed), (_MUL_K, 0, 0, _GOLDEN), (_RSH_K, 0, 0, 16), (_MOD_K, 0, 0, count),
            (_RET_A, 0, 0, 0)]


def pin_group(group: list[socket.socket], seed: int | None = None) -> None:
    """Attach the program to ``group`` (bound, TCP ones listening), so that only its sockets are ever chosen."""
    insns = program(socket.AddressFamily(group[0].family), len(group),
                    secrets.randbits(32) if seed is None else seed)
    code = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(insns), ctypes.addressof(buffer))  # struct sock_fprog
    group[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
