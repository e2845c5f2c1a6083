"""The nnsight topic module: a separate copy, same tokens, and every intervention equal to its
TransformerLens version (stated tolerances), on the embedded model and on tiny models of other
families. No test here may touch a network: a guard makes every socket connection fail."""

from __future__ import annotations

import importlib
import socket
import sys

import nbformat
import pytest
import torch

from fv_exercises.course import SOURCE
from fv_exercises.evaluation import last_position_logits, resid_post_name
from fv_exercises.nnsight_model import (adds_bos, decoder_layers, hf_module, load_nnsight_model,
                                        matching_bos, n_layers, nnsight_add_icl_state,
                                        nnsight_generate, nnsight_hidden_states,
                                        nnsight_last_logits, nnsight_project_out, tl_add_icl_state,
                                        tl_generate_with_vector, tl_last_logits_projected,
                                        tl_project_out, token_ids_match)
from fv_exercises.reference.nnsight import nnsight_generate_with_vector, nnsight_task_vector_logits
from fv_exercises.reference.task_vectors import find_task_vector
from fv_exercises.tasks import ICLDataset

# Tolerances, relative to the largest entry of the TransformerLens result. Both copies run eager
# attention, so the embedded model matches bit for bit (0.0 measured); EXACT leaves room for float
# rounding elsewhere (the bridge computes GPT-2 slightly differently: 4e-6 measured on the tiny
# model), BATCHED for batches padded differently (nnsight left, TransformerLens right).
EXACT, BATCHED = 1e-5, 1e-4


def close(ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> bool:
    """max |ours - theirs| <= rel * max(1, max |theirs|)."""
    return (ours - theirs).abs().max().item() <= rel * max(1.0, theirs.abs().max().item())


class NetworkUsed(RuntimeError):
    pass


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Every socket connection in this module fails (loading, tracing, the notebook's remote cell)."""
    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[1:]!r}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="module")
def nn_model():
    return load_nnsight_model()


@pytest.fixture(scope="module")
def data():
    return ICLDataset.build("antonym", n_prompts=6, seed=3, split="test")


def test_network_guard_works():
    with pytest.raises(NetworkUsed):
        socket.create_connection(("example.com", 80))


def test_a_separate_copy_with_separate_weights(model, nn_model):
    hf = hf_module(nn_model)
    assert hf is not model.original_model
    ours = {p.data_ptr() for p in hf.parameters()}
    assert not ours & {p.data_ptr() for p in model.parameters()}, "weights shared with the bridge"
    assert not any(p.requires_grad for p in hf.parameters())
    assert hf.config._attn_implementation == "eager"
    assert n_layers(nn_model) == model.cfg.n_layers
    assert len(decoder_layers(nn_model)._module) == model.cfg.n_layers


def test_same_token_ids_without_bos(model, nn_model, data):
    prompts = data.prompts + data.zero_shot_prompts + data.corrupted_prompts
    assert not adds_bos(nn_model.tokenizer) and not model.cfg.default_prepend_bos
    assert token_ids_match(model, nn_model, prompts)
    with matching_bos(model, nn_model):  # a no-op here
        assert model.cfg.default_prepend_bos is False
    assert model.cfg.default_prepend_bos is False


def test_matching_bos_restores_the_bridge(model, nn_model):
    model.cfg.default_prepend_bos = True
    try:
        with matching_bos(model, nn_model):
            assert model.cfg.default_prepend_bos is False
        assert model.cfg.default_prepend_bos is True
    finally:
        model.cfg.default_prepend_bos = False


def test_hidden_states_equal_resid_post(model, nn_model, data):
    prompt = data.prompts[0]
    ours = nnsight_hidden_states(nn_model, prompt)  # [n_layers, seq, d_model]
    _, cache = model.run_with_cache(prompt)
    theirs = torch.stack([cache[resid_post_name(l)][0] for l in range(model.cfg.n_layers)])
    assert ours.shape == theirs.shape
    assert close(ours, theirs, EXACT)


def test_task_vector_matches_notebook_01(model, nn_model, data):
    for i, layer in ((0, model.cfg.n_layers // 2), (1, 2 * model.cfg.n_layers // 3)):
        icl, zero = data.prompts[i], data.zero_shot_prompts[i + 2]
        assert close(nnsight_task_vector_logits(nn_model, icl, zero, layer),
                     find_task_vector(model, icl, zero, layer), EXACT)


def test_library_task_vector_logits_equal_the_references(model, nn_model, data):
    """The library's versions of notebook 01's ``find_task_vector`` (TransformerLens) and notebook
    07's ``nnsight_task_vector_logits`` (nnsight), which notebook 07 and the main job use instead
    of importing the reference: the same logits, bit for bit."""
    for i, layer in ((0, model.cfg.n_layers // 2), (3, 2 * model.cfg.n_layers // 3)):
        icl, zero = data.prompts[i], data.zero_shot_prompts[(i + 2) % len(data)]
        theirs = find_task_vector(model, icl, zero, layer)
        ours = tl_add_icl_state(model, icl, zero, layer)
        assert ours.shape == theirs.shape == (1, model.to_tokens(zero).shape[1], model.cfg.d_vocab)
        assert torch.equal(ours, theirs)
        nn_ours = nnsight_add_icl_state(nn_model, icl, zero, layer)
        assert torch.equal(nn_ours, nnsight_task_vector_logits(nn_model, icl, zero, layer))
        assert close(nn_ours, theirs, EXACT)


def test_library_generation_with_a_vector_equals_the_references(model, nn_model, data):
    """``nnsight_generate(..., vector, layer)`` is notebook 07's ``nnsight_generate_with_vector``;
    ``generation.generate`` with ``additions`` is notebook 06's ``generate_with_function_vector``
    (the stand-in notebook 07 compares with): the same tokens, the same text."""
    from fv_exercises.generation import generate
    from fv_exercises.reference.generation import generate_with_function_vector

    layer, n = 2 * model.cfg.n_layers // 3, 8
    _, cache = model.run_with_cache(data.prompts[4])
    vector = cache[resid_post_name(layer)][0, -1]
    for prompt in data.zero_shot_prompts[:2]:
        ours = nnsight_generate(nn_model, prompt, n, vector, layer)
        assert ours.dtype == torch.long and ours.shape == (n,)
        assert torch.equal(ours, nnsight_generate_with_vector(nn_model, prompt, vector, layer, n))
        assert (generate(model, [prompt], n, additions={layer: vector})[0]
                == generate_with_function_vector(model, prompt, vector, layer, max_tokens=n))
    with pytest.raises(ValueError, match="layer"):
        nnsight_generate(nn_model, data.zero_shot_prompts[0], 2, vector)


def test_projection_matches_transformer_lens(model, nn_model, data):
    layer = model.cfg.n_layers // 2
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    for prompt in data.prompts[:2]:
        theirs = tl_project_out(model, prompt, direction, layer)
        assert close(nnsight_project_out(nn_model, prompt, direction, layer), theirs, EXACT)


def test_projection_matches_notebook_05_reference_when_present(model, data):
    """Switches to notebook 05's graded `ablate_function_vector` once it exists."""
    ablation = pytest.importorskip("fv_exercises.reference.ablation")
    layer = model.cfg.n_layers // 2
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    theirs = ablation.ablate_function_vector(model, data.prompts[0], direction, layer)
    assert close(tl_project_out(model, data.prompts[0], direction, layer), theirs, EXACT)


def test_generation_matches_notebook_06_reference_when_present(model, nn_model, data):
    """Notebook 06's `generate_with_function_vector` (TransformerLens, KV cache, stops at EOS and
    returns text) gives the text of our exact-length generations, up to the first EOS."""
    generation = pytest.importorskip("fv_exercises.reference.generation")
    layer, n = 2 * model.cfg.n_layers // 3, 8
    _, cache = model.run_with_cache(data.prompts[2])
    vector = cache[resid_post_name(layer)][0, -1]
    eos = model.tokenizer.eos_token_id
    for prompt in data.zero_shot_prompts[:2]:
        ids = nnsight_generate_with_vector(nn_model, prompt, vector, layer, n).tolist()
        ids = ids[:ids.index(eos)] if eos in ids else ids
        theirs = generation.generate_with_function_vector(model, prompt, vector, layer, max_tokens=n)
        assert model.tokenizer.decode(ids) == theirs


def test_batched_interventions_match(model, nn_model, data):
    """Left-padded nnsight batches vs right-padded TransformerLens batches, mixed lengths."""
    prompts = data.prompts[:3] + data.zero_shot_prompts[:3]
    layer = model.cfg.n_layers // 2
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2)) * 10
    plain = nnsight_last_logits(nn_model, prompts)
    assert close(plain, last_position_logits(model, prompts), BATCHED)
    added = nnsight_last_logits(nn_model, prompts, add={layer: vector})
    assert close(added, last_position_logits(model, prompts, add={layer: vector}), BATCHED)
    projected = nnsight_last_logits(nn_model, prompts, project_out={layer: vector})
    assert close(projected, tl_last_logits_projected(model, prompts, vector, layer), BATCHED)


def test_generation_matches_cached_transformer_lens(model, nn_model, data):
    layer, n = 2 * model.cfg.n_layers // 3, 6
    _, cache = model.run_with_cache(data.prompts[0])
    vector = cache[resid_post_name(layer)][0, -1]
    for prompt in data.zero_shot_prompts[:2]:
        ours = nnsight_generate_with_vector(nn_model, prompt, vector, layer, n)
        assert ours.dtype == torch.long and ours.shape == (n,)
        assert torch.equal(ours, tl_generate_with_vector(model, prompt, vector, layer, n))
    # without a vector: both equal Hugging Face's own greedy generation
    hf = hf_module(nn_model)
    ids = torch.tensor([nn_model.tokenizer(data.zero_shot_prompts[0])["input_ids"]])
    plain_hf = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           eos_token_id=None)[0, ids.shape[1]:]
    assert torch.equal(nnsight_generate(nn_model, data.zero_shot_prompts[0], n), plain_hf)
    assert torch.equal(tl_generate_with_vector(model, data.zero_shot_prompts[0], None, layer, n), plain_hf)


def test_cached_and_seed_generation_differ(model, data):
    """The two meanings of 'the vector at every step' are different computations (notebook 06)."""
    layer, n = 2 * model.cfg.n_layers // 3, 8
    _, cache = model.run_with_cache(data.prompts[1])
    vector = cache[resid_post_name(layer)][0, -1]
    prompt = data.zero_shot_prompts[1]
    cached = tl_generate_with_vector(model, prompt, vector, layer, n)
    seed = tl_generate_with_vector(model, prompt, vector, layer, n, use_cache=False)
    assert cached[0] == seed[0]  # the first token: the same single forward pass
    assert not torch.equal(cached, seed)


def test_load_rejects_a_folder_without_a_model(tmp_path):
    from fv_exercises.model import ModelLoadError

    with pytest.raises(ModelLoadError, match="config.json"):
        load_nnsight_model(tmp_path)


# --------------------------------------------------------------------------------------------
# The remote cell: guarded, never runs by default
# --------------------------------------------------------------------------------------------


def _remote_cells() -> list[str]:
    nb = nbformat.read(SOURCE / "07_nnsight" / "07_nnsight.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "remote=True" in c.source]


def test_every_remote_call_is_guarded():
    cells = _remote_cells()
    assert cells, "the notebook shows no remote=True example"
    for source in cells:
        assert "RUN_REMOTE = False" in source
        assert 'if RUN_REMOTE and os.environ.get("NDIF_API_KEY"):' in source
        guarded = source.split('if RUN_REMOTE and os.environ.get("NDIF_API_KEY"):', 1)[1]
        before = source.split('if RUN_REMOTE and os.environ.get("NDIF_API_KEY"):', 1)[0]
        assert "remote=True" not in before and "remote=True" in guarded


@pytest.mark.parametrize("run, key", [(False, "a-key"), (True, None), (False, None)])
def test_remote_cell_does_nothing_by_default(run, key, monkeypatch, capsys):
    """Executed as written (RUN_REMOTE forced to `run`): no network, no model built."""
    if key is None:
        monkeypatch.delenv("NDIF_API_KEY", raising=False)
    else:
        monkeypatch.setenv("NDIF_API_KEY", key)
    for source in _remote_cells():
        source = source.replace("RUN_REMOTE = False", f"RUN_REMOTE = {run}")
        exec(compile(source, "<remote cell>", "exec"), {"os": importlib.import_module("os"),
                                                        "train": None, "test": None})
        assert "nothing left this machine" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Other families: tiny random models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "qwen2", "gemma"])
def test_tiny_models_of_other_families(family, tmp_path):
    sys.path.insert(0, str(SOURCE.parent / "tests"))
    from tiny_models import build_tiny_model

    from fv_exercises import load_model

    folder = build_tiny_model(family, tmp_path / family)
    bridge, tiny = load_model(folder), load_nnsight_model(folder)
    assert len(decoder_layers(tiny)._module) == bridge.cfg.n_layers
    data = ICLDataset.build("antonym", n_prompts=2, n_shots=2, seed=0)
    with matching_bos(bridge, tiny):
        assert token_ids_match(bridge, tiny, data.prompts)
        prompt = data.prompts[0]
        _, cache = bridge.run_with_cache(prompt)
        theirs = torch.stack([cache[resid_post_name(l)][0] for l in range(bridge.cfg.n_layers)])
        assert close(nnsight_hidden_states(tiny, prompt), theirs, EXACT)
        layer = bridge.cfg.n_layers // 2
        assert close(nnsight_task_vector_logits(tiny, prompt, data.zero_shot_prompts[1], layer),
                     find_task_vector(bridge, prompt, data.zero_shot_prompts[1], layer), EXACT)
        vector = cache[resid_post_name(layer)][0, -1]
        assert torch.equal(nnsight_generate_with_vector(tiny, data.zero_shot_prompts[0], vector, layer, 4),
                           tl_generate_with_vector(bridge, data.zero_shot_prompts[0], vector, layer, 4))


def test_checks_and_headline_on_a_tiny_gpt2(tmp_path, capsys):
    sys.path.insert(0, str(SOURCE.parent / "tests"))
    from tiny_models import build_tiny_model

    from fv_exercises import load_model
    from fv_exercises.checks.nnsight import (check_nnsight_generate_with_vector,
                                             check_nnsight_task_vector_logits)
    from fv_exercises.nnsight_model import headline
    from fv_exercises.report import Context

    folder = build_tiny_model("gpt2", tmp_path / "gpt2")
    bridge, tiny = load_model(folder), load_nnsight_model(folder)
    for hidden in (False, True):
        check_nnsight_task_vector_logits(nnsight_task_vector_logits, bridge, tiny, hidden=hidden)
        check_nnsight_generate_with_vector(nnsight_generate_with_vector, bridge, tiny, hidden=hidden)
    assert bridge.cfg.default_prepend_bos is True, "the check must restore the bridge's BOS setting"
    del tiny
    rows = headline(Context(bridge))
    names = [r.name for r in rows]
    assert any("hidden states" in n for n in names) and any("generation" in n for n in names)
    diffs = [r.number for r in rows if "max |TL - nnsight|" in r.name]
    assert diffs and all(d <= 1e-3 for d in diffs)  # absolute: logits and states of size ~10-100
    assert "matches TransformerLens" in capsys.readouterr().out


def test_projection_removes_only_the_direction():
    from fv_exercises.nnsight_model import _projection_hook

    g = torch.Generator().manual_seed(3)
    direction, resid = torch.randn(16, generator=g), torch.randn(2, 5, 16, generator=g)
    unit = direction / direction.norm()
    projected = _projection_hook(direction)(resid)
    assert (projected @ unit).abs().max() < 1e-5
    assert torch.allclose(projected + (resid @ unit)[..., None] * unit, resid, atol=1e-6)
