"""msgpack with numpy arrays: the byte format openpi's policy servers and `openpi-client` exchange.

An array travels as a msgpack map with bytes keys {__ndarray__: True, data: raw bytes, dtype: numpy dtype string
(e.g. "|u1", "<f4"), shape: [..]}; a numpy scalar as {__npgeneric__: True, data: its Python value, dtype}. Everything
else is plain msgpack (maps, lists, str, bytes, numbers). Written from the format openpi documents, so either side can
be openpi's or ours.

Unpacking is strict because the bytes come from the network: only plain numeric / bool dtypes (no object, void or
structured arrays, which is also why pickle-based msgpack-numpy is not used), and the data must be exactly
shape x itemsize bytes. Anything else is a `WireError`, which the server turns into an error reply.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

ALLOWED_KINDS = "biuf"  # bool, signed / unsigned int, float: what observations and actions are made of
MAX_DIMS = 8


class WireError(ValueError):
    """Bytes that are not a well-formed message of this format."""


def _encode(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send a numpy array of dtype {obj.dtype}")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send a numpy scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def _dtype(text) -> np.dtype:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    try:
        dtype = np.dtype(str(text))
    except TypeError:
        raise WireError(f"unknown array dtype {text!r}") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None:
        raise WireError(f"array dtype {dtype} is not allowed (only bool, int, uint and float arrays)")
    return dtype


def _decode(obj: dict):
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape, data = obj.get(b"shape"), obj.get(b"data")
        if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS or not all(
                isinstance(n, int) and n >= 0 for n in shape):
            raise WireError("malformed array: needs bytes data and a shape of non-negative ints")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise WireError(f"malformed array: shape {list(shape)} of {dtype} needs "
                            f"{math.prod(shape) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError):
            raise WireError(f"malformed numpy scalar of dtype {dtype}") from None
    return obj


def pack(obj) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(data: bytes):
    """bytes -> object; raises WireError for anything that is not msgpack of this format."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("expected a binary message (msgpack), got text")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError, msgpack.exceptions.StackError,
            ValueError, TypeError) as err:
        raise WireError(f"not a msgpack message ({type(err).__name__}: {err})"[:300]) from None
