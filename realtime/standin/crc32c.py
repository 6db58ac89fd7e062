"""CRC-32C (Castagnoli), the checksum an OP_MSG may carry: pure Python, as neither the standard library nor a
dependency of the project has it (``zlib.crc32`` is the other CRC-32, polynomial 0x04C11DB7).

Table-driven, eight bytes at a time ("slicing-by-8"): about 15 MB/s. Drivers do not send checksums; the
legacy ``mongo`` shell does, on small messages.
"""

from __future__ import annotations

import struct

_POLY = 0x82F63B78  # 0x1EDC6F41, bit-reversed


def _tables() -> tuple[list[int], ...]:
    first = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        first.append(crc)
    tables = [first]
    for _ in range(7):  # table k: the CRC of a byte followed by k zero bytes
        prev = tables[-1]
        tables.append([(prev[i] >> 8) ^ first[prev[i] & 0xFF] for i in range(256)])
    return tuple(tables)


_T = _tables()


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """The CRC-32C of ``data``, continuing from ``crc`` (the CRC of what came before it)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    crc ^= 0xFFFFFFFF
    whole = len(data) // 8 * 8
    for (word,) in struct.iter_unpack("<Q", data[:whole]):
        x = word ^ crc
        crc = (t7[x & 0xFF] ^ t6[(x >> 8) & 0xFF] ^ t5[(x >> 16) & 0xFF] ^ t4[(x >> 24) & 0xFF]
               ^ t3[(x >> 32) & 0xFF] ^ t2[(x >> 40) & 0xFF] ^ t1[(x >> 48) & 0xFF] ^ t0[x >> 56])
    for byte in bytes(data[whole:]):
        crc = t0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
