"""What crosses the grading sandbox's wall: values round-trip exactly, and garbage is refused."""

from __future__ import annotations

import base64
import math
import pickle

import numpy as np
import pytest
import torch

from fv_exercises.wire import MAX_DEPTH, Opaque, Ref, WireError, decode, encode


@pytest.mark.parametrize("value", [
    None, True, 3, -2.5, "text", [1, "a", None], (1, 2), {3: 0.5, "k": [1]}, {(20, 5), (3, 1)},
    {(1, 2): "tuple key"}, [[[]]], "",
])
def test_plain_values_round_trip(value):
    assert decode(encode(value)) == value


def test_tensors_round_trip_bit_for_bit_in_every_dtype():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                  torch.int32, torch.bool, torch.uint8):
        t = (torch.randn(3, 5) * 100).to(dtype)
        back = decode(encode({"t": t, "same": [t, t]}))
        assert back["t"].dtype == dtype and torch.equal(back["t"], t)
    assert decode(encode(torch.tensor(7.0))).shape == ()


def test_non_finite_numbers_and_numpy_survive():
    back = decode(encode([math.nan, math.inf, np.arange(4), np.float32(1.5)]))
    assert math.isnan(back[0]) and back[1] == math.inf
    assert torch.equal(back[2], torch.arange(4)) and back[3] == 1.5


def test_unknown_objects_keep_their_type_name_and_plain_attributes():
    class CausalLMOutput(dict):
        pass

    out = decode(encode(CausalLMOutput(logits=torch.ones(2), loss=None, _private=1)))
    assert isinstance(out, Opaque) and type(out).__name__ == "CausalLMOutput"
    assert torch.equal(out.logits, torch.ones(2)) and out.loss is None
    assert not hasattr(out, "_private")
    assert type(decode(encode(lambda x: x))).__name__ == "function"


def test_refs_travel_by_name():
    model = object()
    text = encode([model, 1], refs=lambda v: "model" if v is model else None)
    assert decode(text) == [Ref("model"), 1]
    assert decode(text, resolve=lambda name: model)[0] is model


@pytest.mark.parametrize("payload", [
    "not base64 !!", base64.b64encode(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}").decode(),
    base64.b64encode(pickle.dumps({"x": 1})).decode(), 123, "",
])
def test_garbage_is_refused_not_executed(payload):
    with pytest.raises(WireError):
        decode(payload)


def _raw(header: str) -> str:
    data = header.encode()
    return base64.b64encode(len(data).to_bytes(8, "little") + data).decode()


def test_hostile_structures_are_refused():
    deep = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    for header in (deep, '{"$tensor": "t9"}', '{"$dict": [[[1], 2]]}', '{"$what": 1}',
                   '{"$opaque": "x", "attrs": [1]}'):
        with pytest.raises(WireError):
            decode(_raw(header))
    odd = decode(_raw('{"$opaque": "os.system; rm -rf", "attrs": {"__class__": 1, "ok": 2}}'))
    assert type(odd).__name__.isidentifier() and odd.ok == 2 and type(odd) is not int


def test_course_records_travel_by_value_and_only_they_do():
    """Notebook 08's checks pass ``ChoicePrompts`` to ``steered_agreement``: its lists must arrive."""
    from fv_exercises.sycophancy import ChoicePrompts

    prompts = ChoicePrompts(["a b", "c d e"], [1, 2], [10, 11], [20, 21])
    back = decode(encode(prompts))
    assert type(back) is ChoicePrompts and back == prompts
    for header in ('{"$data": "os.system", "fields": {}}',
                   '{"$data": "fv_exercises.sycophancy.ChoicePrompts", "fields": {"texts": []}}'):
        with pytest.raises(WireError):
            decode(_raw(header))
