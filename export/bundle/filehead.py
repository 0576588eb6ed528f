"""A bundle file's size and first bytes, checked before it is hashed or loaded (the C++ reader does the same).

The size must be the manifest's ``bytes`` (from ``fstat``: nothing is read); then the format's magic:
``.safetensors`` (8-byte little-endian header length that fits in the file, then ``{``), ``.onnx``
(a protobuf ModelProto starts with field 1, ``ir_version``: byte 0x08), ``.npy`` (``\\x93NUMPY``).
So a 600 MB file that is not what its name says is refused after reading a few bytes.
"""

from __future__ import annotations

import os
import stat
import struct

from clap_edge.core.io import open_no_wait

HEAD_BYTES = 16


def head_problem(name: str, head: bytes, size: int) -> str | None:
    """Why `head` (the first bytes of a file of `size` bytes) cannot be the format `name` says (None: it can)."""
    if name.endswith(".safetensors"):
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
        if len(head) < 9 or not 2 <= n <= size - 8 or head[8:9] != b"{":
            return "is not a safetensors file (bad header)"
    elif name.endswith(".onnx"):
        if head[:1] != b"\x08":
            return "is not an ONNX model (bad first bytes)"
    elif name.endswith(".npy"):
        if head[:6] != b"\x93NUMPY":
            return "is not a .npy file (bad first bytes)"
    return None


def check_file(path: str | os.PathLike, name: str, expected_bytes: int) -> str | None:
    """Open without following a FIFO's writer (O_NONBLOCK), fstat, compare the size, read the head: a problem or None."""
    fd, st = open_no_wait(path, follow_symlinks=False)
    try:
        if not stat.S_ISREG(st.st_mode):
            return "is not a regular file"
        if st.st_size != expected_bytes:
            return f"has {st.st_size} bytes but the manifest lists {expected_bytes} bytes"
        return head_problem(name, os.pread(fd, HEAD_BYTES, 0), st.st_size)
    finally:
        os.close(fd)
