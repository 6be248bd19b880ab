"""Checkpoints that load without running code: plain values and arrays, never pickles.

``dumps(state) -> bytes`` / ``loads(bytes) -> state`` for what the engine checkpoints every
generation (the progress and every part's ``state_dict()``): nested dict / list / tuple / set of
None, bool, int, float, str, bytes, numpy arrays and scalars (``np.save`` with
``allow_pickle=False``), torch tensors (stored as arrays, loaded on the CPU) and numpy random
generators (their ``bit_generator.state``, which is plain values). Anything else is refused when
it is written, naming where it sits, so a plugin learns at once that its state is not portable.

Layout: ``MAGIC``, an 8-byte little-endian length, the JSON skeleton (arrays replaced by
``{"__array__": i}``), then each array as its 8-byte length and ``np.save`` bytes.

``load_torch(path, what)`` is the one way plugins read a ``.pt`` file: ``weights_only=True``, and
a file that holds anything but tensors and plain values is refused in one line.
``torch_plain(obj)`` turns what a saver holds (numpy arrays and scalars) into what such a file
may hold.
"""
from __future__ import annotations

import io
import json
import math
import struct

import numpy as np

from stimopt.errors import StimoptError

MAGIC = b"STIMOPT-STATE-1\n"
_TAGS = ("__array__", "__tuple__", "__set__", "__dict__", "__bytes__", "__float__", "__rng__", "__randomstate__",
         "__torch__", "__npscalar__")
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class StateError(StimoptError):
    """A checkpoint that cannot be written or read safely."""


def _encode(obj, arrays: list, where: str):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic):
        return {"__npscalar__": _array(np.asarray(obj), arrays, where)}
    if isinstance(obj, np.ndarray):
        return {"__array__": _array(obj, arrays, where)}
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": _array(np.frombuffer(bytes(obj), dtype=np.uint8), arrays, where)}
    if isinstance(obj, np.random.Generator):
        return {"__rng__": _encode(obj.bit_generator.state, arrays, where)}
    if isinstance(obj, np.random.RandomState):
        return {"__randomstate__": _encode(obj.get_state(legacy=False), arrays, where)}
    if type(obj).__module__ == "torch" and type(obj).__name__ in ("Tensor", "Parameter"):
        t = obj.detach().cpu()
        name = str(t.dtype).replace("torch.", "")
        if name == "bfloat16":
            t = t.view(__import__("torch").int16)
        return {"__torch__": _array(t.numpy(), arrays, where), "dtype": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, (set, frozenset)):
        return {"__set__": [_encode(v, arrays, f"{where}{{}}") for v in sorted(obj, key=repr)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, arrays, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, arrays, f"{where}<key>"), _encode(v, arrays, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    raise StateError(f"checkpoint state at '{where.lstrip('.')}' is a {type(obj).__module__}.{type(obj).__name__}; "
                     "a state_dict may hold only arrays, tensors, numbers, strings, None and lists/dicts of them")


def _array(a: np.ndarray, arrays: list, where: str) -> int:
    buf = io.BytesIO()
    try:
        np.save(buf, a if a.flags.c_contiguous else a.copy(order="C"), allow_pickle=False)
    except ValueError:
        raise StateError(f"checkpoint state at '{where.lstrip('.')}' is an array of Python objects ({a.dtype}); "
                         "store numbers or strings") from None
    arrays.append(buf.getvalue())
    return len(arrays) - 1


def dumps(state) -> bytes:
    arrays: list[bytes] = []
    skeleton = json.dumps(_encode(state, arrays, ""), separators=(",", ":")).encode()
    parts = [MAGIC, struct.pack("<Q", len(skeleton)), skeleton]
    for blob in arrays:
        parts += [struct.pack("<Q", len(blob)), blob]
    return b"".join(parts)


def _decode(obj, arrays: list):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        return arrays[obj["__array__"]]
    if "__npscalar__" in obj:
        return arrays[obj["__npscalar__"]][()]
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__bytes__" in obj:
        return arrays[obj["__bytes__"]].tobytes()
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    if "__set__" in obj:
        return {_decode(v, arrays) for v in obj["__set__"]}
    if "__dict__" in obj:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in obj["__dict__"]}
    if "__rng__" in obj:
        st = _decode(obj["__rng__"], arrays)
        return np.random.Generator(_bit_generator(st))
    if "__randomstate__" in obj:
        st = _decode(obj["__randomstate__"], arrays)
        rs = np.random.RandomState()
        rs.set_state(st)
        return rs
    if "__torch__" in obj:
        import torch

        a = arrays[obj["__torch__"]]
        if obj["dtype"] == "bfloat16":
            return torch.from_numpy(a.copy()).view(torch.bfloat16)
        return torch.from_numpy(a.copy())
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


def _bit_generator(st: dict):
    name = st.get("bit_generator") if isinstance(st, dict) else None
    if name not in _BIT_GENERATORS:
        raise StateError(f"checkpoint holds a random generator of unknown kind '{name}'")
    bg = getattr(np.random, name)()
    bg.state = st
    return bg


def loads(blob: bytes, what: str = "checkpoint"):
    """The state written by ``dumps``; anything else (a pickle, a damaged blob) is a StateError."""
    blob = bytes(blob)
    if not blob.startswith(MAGIC):
        kind = "a Python pickle (an older stimopt, or a crafted file)" if blob[:1] == b"\x80" else "not stimopt's format"
        raise StateError(f"the {what} is {kind}; it is not loaded because unpickling can run code")
    try:
        pos = len(MAGIC)
        (n,) = struct.unpack_from("<Q", blob, pos)
        pos += 8
        skeleton = json.loads(blob[pos:pos + n])
        pos += n
        arrays = []
        while pos < len(blob):
            (m,) = struct.unpack_from("<Q", blob, pos)
            pos += 8
            if pos + m > len(blob):
                raise ValueError("truncated array")
            arrays.append(np.load(io.BytesIO(blob[pos:pos + m]), allow_pickle=False))
            pos += m
        return _decode(skeleton, arrays)
    except StateError:
        raise
    except Exception as exc:  # damaged: struct/json/np.load/index errors
        raise StateError(f"the {what} is damaged ({type(exc).__name__}: {exc})") from None


# -- torch files -------------------------------------------------------------------------------
def torch_plain(obj):
    """``obj`` with numpy arrays as tensors and numpy scalars as Python numbers, so that
    ``torch.load(weights_only=True)`` reads it back."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): torch_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(torch_plain(v) for v in obj)
    return obj


def load_torch(path, what: str, fix: str = ""):
    """``torch.load(path, weights_only=True)``; a file holding other objects is refused in one line."""
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in first or "Unsupported" in str(exc):
            first = "it holds Python objects other than tensors and plain values"
        raise StimoptError(f"{what} {path} is refused: {first} (loading it could run code){'; ' + fix if fix else ''}") from None
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        raise StimoptError(f"{what} {path} cannot be read ({type(exc).__name__}: {msg}){'; ' + fix if fix else ''}") from None
