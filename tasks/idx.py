"""IDX files, the format of the MNIST distribution: `read_idx` and `write_idx`.

Layout of an IDX file (every multi-byte number big-endian):

    bytes 0–1        0x00 0x00                       (the "magic" prefix)
    byte  2          dtype code (DTYPE_CODES below: 0x08 unsigned byte, …)
    byte  3          ndim, the number of dimensions
    ndim × 4 bytes   the sizes d_0 … d_{ndim−1}, unsigned 32-bit
    the data         d_0 · … · d_{ndim−1} items of that dtype, row-major (C order)

So `train-images-idx3-ubyte` starts 00 00 08 03, then 60000, 28, 28; `train-labels-idx1-ubyte` starts 00 00 08 01,
then 60000. A file may be gzip-compressed (the `.gz` downloads): `read_idx` recognises gzip from its first two bytes
(0x1f 0x8b), whatever the file's name.

Every problem with a file (not IDX, unknown dtype code, truncated, trailing bytes, broken gzip) raises
refimpl.errors.UnsupportedError whose message starts with the file's path and says what is wrong.
"""

from __future__ import annotations

import gzip as _gzip
import zlib
from pathlib import Path

import numpy as np

from refimpl.errors import UnsupportedError

#: IDX dtype code → NumPy dtype as stored (big-endian).
DTYPE_CODES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _raw_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip."""
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return _gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError; a cut-off stream is an EOFError
        raise UnsupportedError(f"{path}: broken gzip data ({e}); download the file again, or unpack it with "
                               f"gunzip and use the plain file") from None


def read_idx(path) -> np.ndarray:
    """Read one IDX file (plain or gzip) into an array.

    Args:
        path: the file (str or Path).
    Returns:
        an array of the file's shape (d_0, …, d_{ndim−1}) in native byte order (dtype uint8 for MNIST).
    Raises:
        UnsupportedError naming the file and the problem: a bad magic prefix, an unknown dtype code, a header or
        data shorter than the header announces (truncated), or bytes left over after the data.
    """
    path = Path(path)
    data = _raw_bytes(path)
    if len(data) < 4:
        raise UnsupportedError(f"{path}: truncated: {len(data)} bytes, shorter than the 4-byte IDX header")
    if data[0] != 0 or data[1] != 0:
        raise UnsupportedError(f"{path}: not an IDX file: bad magic number (first bytes {data[0]:#04x} {data[1]:#04x}, "
                               f"expected 0x00 0x00); is it the right file, or an HTML error page saved by mistake?")
    code, ndim = data[2], data[3]
    if code not in DTYPE_CODES:
        raise UnsupportedError(f"{path}: unsupported IDX dtype code {code:#04x}; supported: "
                               + ", ".join(f"{c:#04x} ({d.name})" for c, d in DTYPE_CODES.items()))
    if ndim == 0:
        raise UnsupportedError(f"{path}: the header says 0 dimensions; an IDX file has at least one")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UnsupportedError(f"{path}: truncated: the header announces {ndim} dimensions ({header} header bytes) "
                               f"but the file has {len(data)} bytes")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = DTYPE_CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise UnsupportedError(f"{path}: truncated: shape {shape} needs {expected} data bytes but only {actual} "
                               f"follow the header; download the file again")
    if actual > expected:
        raise UnsupportedError(f"{path}: {actual - expected} bytes left over after the data of shape {shape}; "
                               f"the header does not match the file")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))      # a fresh, writable, native-endian copy


def write_idx(path, array, gzip: bool = False) -> Path:
    """Write an array as an IDX file (big-endian, as the format requires); the inverse of `read_idx`.

    Args:
        path: where to write (str or Path); the name is used as given (add ".gz" yourself when gzip=True, to
            match the MNIST file names).
        array: an array with 1 to 255 dimensions whose dtype is one of DTYPE_CODES (uint8, int8, int16, int32,
            float32, float64; any byte order).
        gzip: compress the file with gzip.
    Returns:
        the path written.
    """
    path = Path(path)
    array = np.asarray(array)
    native = {d.newbyteorder("="): c for c, d in DTYPE_CODES.items()}
    code = native.get(array.dtype.newbyteorder("="))
    if code is None:
        raise UnsupportedError(f"write_idx: dtype {array.dtype} has no IDX code; convert the array to one of "
                               + ", ".join(d.newbyteorder("=").name for d in DTYPE_CODES.values()))
    if not 1 <= array.ndim <= 255:
        raise UnsupportedError(f"write_idx: an IDX file holds 1 to 255 dimensions, got an array of shape {array.shape}")
    if max(array.shape) >= 2**32:
        raise UnsupportedError(f"write_idx: sizes must fit in 32 bits, got shape {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=DTYPE_CODES[code]).tobytes()
    path.write_bytes(_gzip.compress(data) if gzip else data)
    return path
