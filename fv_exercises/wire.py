"""Values that cross the grading sandbox's wall: a learner function's arguments and its result.

While a class is graded (:mod:`fv_exercises.judge`), the judge process calls a learner's function
that lives in a sandboxed kernel. Arguments go in, the result (and what the call did to its
arguments) comes back, as *data only*: JSON for structure, safetensors for tensors, both
base64-wrapped into one text. Nothing here unpickles or evaluates: a kernel that lies can only
send wrong numbers, which the judge then scores as wrong.

What round-trips exactly: ``None``, ``bool``, ``int``, ``float`` (NaN and infinities too), ``str``,
``list``, ``tuple``, ``dict`` (any keys that round-trip), ``set``, ``torch.Tensor`` (every dtype
safetensors stores; bit for bit), numpy arrays (as tensors). Any other object arrives as an
:class:`Opaque` whose class has the original type's name (so a check can say "you returned a
CausalLMOutput") and whose public attributes of those kinds are kept (``result.logits``).
The course's own records listed in :data:`CARRIED` (``ChoicePrompts``, notebook 08's prompts;
``FunctionVectorRecipe``) travel field by field and are rebuilt as that class on the other side. Named globals of
the judge (``model``, ``nn_model``) travel as :class:`Ref` and are replaced on the other side by
the kernel's object of the same name.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

MAX_BYTES = 256 << 20  # a payload larger than this is refused (logits of a few prompts are ~10 MB)
MAX_DEPTH = 32
_NAME = re.compile(r"[^A-Za-z0-9_]")
#: Dataclasses of the course that a check passes to a learner's function, rebuilt by value.
CARRIED = ("fv_exercises.sycophancy.ChoicePrompts",
           # what a sandboxed kernel asks the grader to build for the disk cache (remote.unsaved)
           "fv_exercises.heads.FunctionVectorRecipe")


class WireError(ValueError):
    """A payload that cannot be read: too large, too deep, or not what this module writes."""


@dataclass(frozen=True)
class Ref:
    """A global of the other side, by name (e.g. the kernel's own ``model``)."""

    name: str


class Opaque:
    """Stand-in for an object of a type the wire does not carry; its class bears the type's name."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (not carried across the grading sandbox)>"


def _opaque_class(type_name: str) -> type:
    return type(_NAME.sub("_", type_name)[:80] or "Object", (Opaque,), {})


class _Encoder:
    def __init__(self, refs: Callable[[Any], str | None]):
        self.refs = refs
        self.tensors: dict[str, torch.Tensor] = {}

    def tensor(self, t: torch.Tensor) -> dict:
        key = f"t{len(self.tensors)}"
        t = t.detach().cpu()
        if t.is_complex():  # safetensors has no complex dtypes
            return {"$opaque": "Tensor", "attrs": {}}
        self.tensors[key] = t.contiguous().clone()
        return {"$tensor": key}

    def value(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        name = self.refs(v)
        if name is not None:
            return {"$ref": name}
        if v is None or isinstance(v, (bool, str)) or type(v) in (int, float):
            return v
        if isinstance(v, torch.Tensor):
            return self.tensor(v)
        if type(v).__module__ == "numpy" and hasattr(v, "dtype"):
            try:
                if getattr(v, "ndim", 0) == 0:
                    return self.value(v.item(), depth)
                return self.tensor(torch.from_numpy(v.copy()))
            except Exception:
                pass
        if isinstance(v, (int, float)):  # int/float subclasses (numpy scalars handled above)
            return float(v) if isinstance(v, float) else int(v)
        if type(v) is list:
            return [self.value(x, depth + 1) for x in v]
        if isinstance(v, tuple) and not hasattr(v, "_fields"):
            return {"$tuple": [self.value(x, depth + 1) for x in v]}
        if type(v) in (set, frozenset):
            return {"$set": [self.value(x, depth + 1) for x in v]}
        if type(v) is dict:
            return {"$dict": [[self.value(k, depth + 1), self.value(x, depth + 1)] for k, x in v.items()]}
        qualified = f"{type(v).__module__}.{type(v).__qualname__}"
        if qualified in CARRIED and dataclasses.is_dataclass(v):
            return {"$data": qualified, "fields": {f.name: self.value(getattr(v, f.name), depth + 1)
                                                   for f in dataclasses.fields(v)}}
        return {"$opaque": type(v).__name__, "attrs": self.attrs(v, depth)}

    def attrs(self, v: Any, depth: int) -> dict:
        """Public attributes (or mapping items) of an object of an unknown type, where they are
        tensors or plain values (e.g. ``CausalLMOutput.logits``)."""
        try:
            items = dict(v.items()) if hasattr(v, "items") else dict(vars(v))
        except Exception:
            return {}
        out = {}
        for k, x in list(items.items())[:20]:
            if isinstance(k, str) and not k.startswith("_") and (
                    isinstance(x, (torch.Tensor, str, int, float, bool)) or x is None):
                out[k] = self.value(x, depth + 1)
        return out


def encode(value: Any, refs: Callable[[Any], str | None] = lambda v: None) -> str:
    """``value`` as one ASCII text (base64 of a length-prefixed JSON header and safetensors blob).

    ``refs(v)`` names a value that should travel as a :class:`Ref` instead (or returns None).
    """
    enc = _Encoder(lambda v: v.name if isinstance(v, Ref) else refs(v))
    header = json.dumps(enc.value(value)).encode()
    blob = save_tensors(enc.tensors) if enc.tensors else b""
    raw = len(header).to_bytes(8, "little") + header + blob
    if len(raw) > MAX_BYTES:
        raise WireError(f"value of {len(raw) >> 20} MB is larger than the {MAX_BYTES >> 20} MB limit")
    return base64.b64encode(raw).decode("ascii")


def decode(text: str, resolve: Callable[[str], Any] = Ref) -> Any:
    """The value :func:`encode` wrote. ``resolve(name)`` turns a :class:`Ref` into an object.

    Raises :class:`WireError` on anything else (it never executes or unpickles anything).
    """
    if not isinstance(text, str) or len(text) > MAX_BYTES * 4 // 3 + 4:
        raise WireError("payload missing or too large")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n].decode())
        tensors = load_tensors(raw[8 + n:]) if len(raw) > 8 + n else {}
    except Exception as exc:
        raise WireError(f"unreadable payload ({type(exc).__name__})") from None
    try:
        return _Decoder(tensors, resolve).value(header, 0)
    except WireError:
        raise
    except Exception as exc:  # e.g. an unhashable dict key
        raise WireError(f"unreadable payload ({type(exc).__name__})") from None


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], resolve: Callable[[str], Any]):
        self.tensors, self.resolve = tensors, resolve

    def value(self, v: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("value nested too deeply")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [self.value(x, depth + 1) for x in v]
        if not isinstance(v, dict) or len(v) > 2:
            raise WireError("unexpected structure")
        if "$tensor" in v:
            if v["$tensor"] not in self.tensors:
                raise WireError("missing tensor")
            return self.tensors[v["$tensor"]]
        if "$ref" in v:
            return self.resolve(str(v["$ref"]))
        if "$tuple" in v:
            return tuple(self.value(x, depth + 1) for x in self._list(v["$tuple"]))
        if "$set" in v:
            return set(self.value(x, depth + 1) for x in self._list(v["$set"]))
        if "$dict" in v:
            return {self.value(k, depth + 1): self.value(x, depth + 1)
                    for k, x in (self._pair(p) for p in self._list(v["$dict"]))}
        if "$data" in v:
            return self.record(v, depth)
        if "$opaque" in v:
            obj = _opaque_class(str(v["$opaque"]))()
            attrs = v.get("attrs") or {}
            if not isinstance(attrs, dict):
                raise WireError("unexpected structure")
            for k, x in attrs.items():
                if isinstance(k, str) and k.isidentifier() and not k.startswith("_"):
                    setattr(obj, k, self.value(x, depth + 1))
            return obj
        raise WireError("unexpected structure")

    def record(self, v: dict, depth: int) -> Any:
        """A dataclass of :data:`CARRIED`, rebuilt from its fields (no other class is imported)."""
        qualified, fields = v.get("$data"), v.get("fields")
        if qualified not in CARRIED or not isinstance(fields, dict):
            raise WireError("unexpected structure")
        module, _, name = str(qualified).rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        known = {f.name for f in dataclasses.fields(cls)}
        if set(fields) != known:
            raise WireError(f"a {name} with other fields than the course's")
        return cls(**{k: self.value(x, depth + 1) for k, x in fields.items()})

    @staticmethod
    def _list(v: Any) -> list:
        if not isinstance(v, list):
            raise WireError("unexpected structure")
        return v

    @staticmethod
    def _pair(p: Any) -> tuple:
        if not isinstance(p, list) or len(p) != 2:
            raise WireError("unexpected structure")
        return p[0], p[1]
