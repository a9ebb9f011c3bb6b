"""A small writer of real RAR archives for tests.

No tool on a Debian machine creates RAR files (``rar`` is non-free), so the tests
make their own: :func:`rar5` writes the RAR 5.0 format and :func:`rar4` the
RAR 1.5-4.x one ("RAR4"), after https://www.rarlab.com/technote.htm. Members
are stored (method 0), which is what lets this stay small, or (RAR5,
``compressed=True``) one compressed block of literals only (:func:`_literals`):
no smaller, but decoding it takes a RAR tool, as any compressed member does.
``unar``/``lsar`` and ``bsdtar`` read the result as well as :mod:`rarfile`, so
these are real archives.

An :class:`Entry` is a file, a folder, a symbolic link (RAR5: a file system
redirection record; RAR4: a Unix mode of ``S_IFLNK`` with the target as data),
a RAR5 hard link, or an encrypted file: its header says AES-256 with a salt and
IV, but the data is left as it is (no reader gets that far without a password,
and conveyor takes none). ``solid=True`` sets the archive's solid flag and, on
every member after the first, the member's own, as ``rar -s`` does (whose
members are all stored, or all compressed: unar reads no stored member amid a
compressed solid stream).
``encrypted_names=True`` (RAR5, ``rar -hp``) writes the archive encryption
header; what follows it stands for the encrypted headers (random bytes: no
reader decrypts them without the password).
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass

RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
RAR4_SIGNATURE = b"Rar!\x1a\x07\x00"
MTIME = 1_700_000_000  # 2023-11-14, a fixed time: the same archive every run


@dataclass(frozen=True)
class Entry:
    name: str  # "/"-separated, as stored
    data: bytes = b""
    kind: str = "file"  # "file", "dir", "symlink" or (RAR5) "hardlink"
    target: str = ""  # a link's target
    encrypted: bool = False
    compressed: bool = False  # RAR5: method 3 ("normal"), see _literals


def _vint(n: int) -> bytes:
    """RAR5's variable-length integer: 7 bits a byte, low first, high bit "more"."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block5(kind: int, fields: bytes, extra: bytes = b"", data: bytes | None = None) -> bytes:
    """A RAR5 header (CRC32, size, type, flags, extra size, data size, fields, extra
    area), then its data area."""
    flags = (0x01 if extra else 0) | (0x02 if data is not None else 0)
    body = _vint(kind) + _vint(flags)
    body += _vint(len(extra)) if extra else b""
    body += _vint(len(data)) if data is not None else b""
    body += fields + extra
    header = _vint(len(body)) + body
    return struct.pack("<I", zlib.crc32(header)) + header + (data or b"")


def _record(kind: int, payload: bytes) -> bytes:
    """An extra-area record: size (of type and payload), type, payload."""
    body = _vint(kind) + payload
    return _vint(len(body)) + body


def rar5(entries: list[Entry], solid: bool = False, encrypted_names: bool = False) -> bytes:
    """A RAR5 archive of ``entries``, in order."""
    if encrypted_names:  # version 0 (AES-256), no check value, KDF count 15, salt
        header = _block5(4, _vint(0) + _vint(0) + bytes([15]) + os.urandom(16))
        return RAR5_SIGNATURE + header + os.urandom(16 + 64)  # IV, "encrypted" headers
    out = [RAR5_SIGNATURE, _block5(1, _vint(0x04 if solid else 0))]  # main: archive flags
    for i, e in enumerate(entries):
        data = e.data if e.kind == "file" else b""
        mode = {"file": 0o100644, "dir": 0o40755, "symlink": 0o120777,
                "hardlink": 0o100644}[e.kind]
        file_flags = 0x02 | (0x01 if e.kind == "dir" else 0x04)  # mtime; dir, or CRC32
        fields = _vint(file_flags) + _vint(len(data)) + _vint(mode) + struct.pack("<I", MTIME)
        if e.kind != "dir":
            fields += struct.pack("<I", zlib.crc32(data))
        # compression information: version 0, solid bit 6, method bits 7-9 (0: store),
        # dictionary bits 10-13 (0: 128 KiB)
        compression = (0x40 if solid and i else 0) | (3 << 7 if e.compressed else 0)
        fields += _vint(compression) + _vint(1)  # host OS: Unix
        name = e.name.encode()
        fields += _vint(len(name)) + name
        extra = b""
        if e.encrypted:  # version 0 (AES-256), no flags, KDF count 15, salt, IV
            extra += _record(0x01, _vint(0) + _vint(0) + bytes([15]) + bytes(16) + bytes(16))
        if e.kind in ("symlink", "hardlink"):  # redirection: its type, no flags, target
            target = e.target.encode()
            redirect = 1 if e.kind == "symlink" else 4
            extra += _record(0x05, _vint(redirect) + _vint(0) + _vint(len(target)) + target)
        packed = _literals(data) if e.compressed else data
        out.append(_block5(2, fields, extra, packed))  # a folder too: an empty data area
    out.append(_block5(5, _vint(0)))  # end of archive: the last volume
    return b"".join(out)


def _literals(data: bytes) -> bytes:
    """``data`` as one RAR5 compressed block that holds only literals, so that a RAR
    tool, not rarfile, must decode it. The Huffman tables give every byte value an
    8-bit code (canonical codes in symbol order: each byte codes as itself) and every
    other symbol none. The table is sent with the bit-length code: symbol 8 ("length
    8") is 0, symbol 19 ("11 + 7 bits of zeros") is 1."""
    bits = "".join(f"{n:04b}" for n in [0] * 8 + [1] + [0] * 10 + [1])  # bit lengths
    bits += "0" * 256  # the 256 literals: length 8
    bits += "1" + f"{138 - 11:07b}" + "1" + f"{36 - 11:07b}"  # the other 174: none
    body = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)) + data
    size = len(body).to_bytes(3, "little").rstrip(b"\0") or b"\0"
    # flags: table present, last block, size in len(size) bytes, all 8 last bits used
    flags = 0x80 | 0x40 | (len(size) - 1) << 3 | 7
    check = 0x5A ^ flags
    for b in size:
        check ^= b
    return bytes([flags, check]) + size + body


def _block4(kind: int, flags: int, fields: bytes, data: bytes = b"") -> bytes:
    """A RAR4 block: CRC16 (the low half of a CRC32 of the rest), type, flags, size."""
    header = struct.pack("<BHH", kind, flags, 7 + len(fields)) + fields
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def _dos_time(t: int) -> int:
    y, mo, d, h, mi, s = time.gmtime(t)[:6]
    return ((y - 1980) << 25) | (mo << 21) | (d << 16) | (h << 11) | (mi << 5) | (s // 2)


def rar4(entries: list[Entry], solid: bool = False) -> bytes:
    """A RAR4 archive of ``entries``, in order (format version 2.9, host OS Unix)."""
    out = [RAR4_SIGNATURE, _block4(0x73, 0x08 if solid else 0, bytes(6))]  # main
    for i, e in enumerate(entries):
        data = e.target.encode() if e.kind == "symlink" else e.data
        mode = {"file": 0o100644, "dir": 0o40755, "symlink": 0o120777}[e.kind]
        flags = 0x8000  # LONG_BLOCK: a data area follows
        flags |= 0x00E0 if e.kind == "dir" else 0  # the "directory" dictionary size
        flags |= 0x0010 if solid and i else 0
        flags |= 0x0004 | 0x0400 if e.encrypted else 0  # encrypted, with a salt
        name = e.name.replace("/", "\\").encode()  # RAR4 paths are DOS paths
        fields = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data),
                             _dos_time(MTIME), 29, 0x30, len(name), mode) + name
        fields += bytes(8) if e.encrypted else b""
        out.append(_block4(0x74, flags, fields, data))
    out.append(_block4(0x7B, 0x4000, b""))  # end of archive
    return b"".join(out)
