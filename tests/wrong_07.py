"""Plausible wrong learner implementations for notebook 07 (nnsight), each with the message it
must get, and correct implementations written differently that the checks must accept.

Written the way a learner would write them with nnsight 0.8 (one mistake each). nnsight compiles
each ``with`` block from its source file, so these must live in a file (not in ``exec``'d text).
"""

from __future__ import annotations

import torch

from fv_exercises.nnsight_model import decoder_layers, hf_module


# ---------------------------------------------------------------- nnsight_task_vector_logits

def tv_no_save(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1]  # forgot .save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_edit_after_trace(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Saves the zero-shot output, then edits it after the block: the run is already over."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        out = layers[layer].output.save()
        logits = nn_model.output.logits.save()
    out[:, -1] += h
    return logits


def tv_all_positions(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output += h
        logits = nn_model.output.logits.save()
    return logits


def tv_first_position(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, 0].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_read_previous_layer(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer - 1].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_read_input(nn_model, icl_prompt, zero_shot_prompt, layer):
    """`.input` is what flows INTO the layer: the residual stream before it."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].input[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_write_next_layer(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer + 1].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_output_zero(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Copied from code written for older transformers, where a layer returned a tuple."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[0][:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[0][:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_bos_both(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Prepends BOS 'to match TransformerLens's default'."""
    bos = nn_model.tokenizer.bos_token
    layers = decoder_layers(nn_model)
    with nn_model.trace(bos + icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(bos + zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_bos_icl(nn_model, icl_prompt, zero_shot_prompt, layer):
    bos = nn_model.tokenizer.bos_token
    layers = decoder_layers(nn_model)
    with nn_model.trace(bos + icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_returns_output_object(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        out = nn_model.output.save()
    return out


def tv_logits_first(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Asks for the logits before the edit: the model has run past the layer by then."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        logits = nn_model.output.logits.save()
        layers[layer].output[:, -1] += h
    return logits


def tv_mlp_output(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].mlp.output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_own_state(nn_model, icl_prompt, zero_shot_prompt, layer):
    """One trace only: adds the zero-shot prompt's own final state to itself."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(zero_shot_prompt):
        h = layers[layer].output[:, -1].clone()
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_doubled(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += 2 * h
        logits = nn_model.output.logits.save()
    return logits


def tv_stub(nn_model, icl_prompt, zero_shot_prompt, layer):
    raise NotImplementedError()


def tv_returns_none(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits.save()  # noqa: F841 - forgot `return`


def tv_returns_last_logits(nn_model, icl_prompt, zero_shot_prompt, layer):
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] += h
        logits = nn_model.output.logits[0, -1].save()
    return logits


_CACHED = {}


def tv_global_cache(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Keeps h and its layer from the first call in a global."""
    layers = decoder_layers(nn_model)
    if "h" not in _CACHED:
        with nn_model.trace(icl_prompt):
            h = layers[layer].output[:, -1].save()
        _CACHED["h"], _CACHED["layer"] = h, layer
    h, at = _CACHED["h"], _CACHED["layer"]
    with nn_model.trace(zero_shot_prompt):
        layers[at].output[:, -1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_permanent_edit(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Right logits, but leaves a stored edit behind that changes every later trace."""
    out = tv_correct_assign_clone(nn_model, icl_prompt, zero_shot_prompt, layer)
    with nn_model.edit(inplace=True):
        decoder_layers(nn_model)[0].output[:] = 0
    return out


def tv_edits_weights(nn_model, icl_prompt, zero_shot_prompt, layer):
    out = tv_correct_assign_clone(nn_model, icl_prompt, zero_shot_prompt, layer)
    with torch.no_grad():
        next(hf_module(nn_model).parameters()).mul_(1.5)
    return out


TASK_VECTOR = {
    tv_no_save: "only if you `.save()` it",
    tv_edit_after_trace: "INSIDE the second `with nn_model.trace(...)` block",
    tv_all_positions: "EVERY position",
    tv_first_position: "FIRST position",
    tv_read_previous_layer: "was read from layer",
    tv_read_input: ".input`, the residual stream BEFORE",
    tv_write_next_layer: "was added at layer",
    tv_output_zero: "`.output[0]` is the first prompt",
    tv_bos_both: "a BOS token was prepended",
    tv_bos_icl: "with a BOS token prepended",
    tv_returns_output_object: "whole output object",
    tv_logits_first: "in the order the model runs them",
    tv_mlp_output: "mlp.output",
    tv_own_state: "OWN final state",
    tv_doubled: "added twice",
    tv_stub: "not implemented yet",
    tv_returns_none: "returned None",
    tv_returns_last_logits: "expected (1,",
    tv_global_cache: "something from the first call survives",
    tv_permanent_edit: "permanent edit",
    tv_edits_weights: "changed the model's weights in place",
}


# Correct, written differently from the reference: the check must accept every one.

def tv_correct_assign_clone(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Assigns a new tensor to `.output` instead of editing in place; logits via lm_head."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[0, -1].save()  # [d_model]
    with nn_model.trace(zero_shot_prompt):
        new = layers[layer].output.clone()
        new[:, -1] = new[:, -1] + h
        layers[layer].output = new
        logits = nn_model.lm_head.output.save()
    return logits


def tv_correct_next_input(nn_model, icl_prompt, zero_shot_prompt, layer):
    """`.input` of layer + 1 is the same tensor as `.output` of layer (batch row 0 indexing)."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer + 1].input[0][-1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[0][-1] += h
        logits = nn_model.output.logits.save()
    return logits


def tv_correct_session(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Both traces inside one session: values flow between them; float64 logits returned."""
    layers = decoder_layers(nn_model)
    with nn_model.session():
        with nn_model.trace(icl_prompt):
            h = layers[layer].output[:, -1].double()
        with nn_model.trace(zero_shot_prompt):
            layers[layer].output[:, -1] += h.float()
            logits = nn_model.output.logits.double().save()
    return logits


def tv_correct_sdpa(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Runs PyTorch's fused attention kernel (float rounding differs), then switches back."""
    hf = hf_module(nn_model)
    before = hf.config._attn_implementation
    hf.set_attn_implementation("sdpa")
    try:
        layers = decoder_layers(nn_model)
        with nn_model.trace(icl_prompt):
            h = layers[layer].output[:, -1].save()
        with nn_model.trace(zero_shot_prompt):
            layers[layer].output[:, -1] += h
            logits = nn_model.output.logits.save()
    finally:
        hf.set_attn_implementation(before)
    return logits


TASK_VECTOR_CORRECT = [tv_correct_assign_clone, tv_correct_next_input, tv_correct_session, tv_correct_sdpa]


# ---------------------------------------------------------------- nnsight_generate_with_vector

def gen_first_pass_only(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        layers[layer].output[:, -1] += vector  # no loop: the first forward pass only
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_open_loop(nn_model, prompt, vector, layer, n_tokens):
    """`tracer.all()`: the loop waits for a pass that never comes; nothing after it runs."""
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.all():
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_every_position(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_seed_loop(nn_model, prompt, vector, layer, n_tokens):
    """The seed's loop: re-run the whole sequence each step, vector at its last position."""
    layers = decoder_layers(nn_model)
    ids = torch.tensor([nn_model.tokenizer(prompt)["input_ids"]])
    for _ in range(n_tokens):
        with nn_model.trace(ids):
            layers[layer].output[:, -1] += vector
            logits = nn_model.output.logits[0, -1].save()
        ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return ids[0, -n_tokens:]


def gen_skip_first(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[1:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_returns_prompt_too(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0]


def gen_batch_dim(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[:, -n_tokens:]


def gen_sampling(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    torch.manual_seed(0)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=True, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_wrong_layer(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer + 1].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_doubled(nn_model, prompt, vector, layer, n_tokens):
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_result_discarded(nn_model, prompt, vector, layer, n_tokens):
    """Computes the sum but never writes it back: nothing is added."""
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            steered = layers[layer].output[:, -1] + vector  # noqa: F841 - never assigned back
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


def gen_fixed_count(nn_model, prompt, vector, layer, n_tokens):
    """Always 6 tokens (the first case's count)."""
    return gen_correct_list(nn_model, prompt, vector, layer, 6)


def gen_stub(nn_model, prompt, vector, layer, n_tokens):
    raise NotImplementedError()


GENERATE = {
    gen_first_pass_only: "only in the FIRST forward pass",
    gen_open_loop: "open-ended `tracer.all()`",
    gen_every_position: "EVERY position of each forward pass",
    gen_seed_loop: "re-ran the whole sequence",
    gen_skip_first: "from the SECOND forward pass on",
    gen_returns_prompt_too: "followed by the",
    gen_batch_dim: "without the batch dimension",
    gen_sampling: "do_sample=False",
    gen_wrong_layer: "added at layer",
    gen_doubled: "added twice",
    gen_result_discarded: "no vector was added",
    gen_fixed_count: "expected 8",
    gen_stub: "not implemented yet",
}


def gen_correct_list(nn_model, prompt, vector, layer, n_tokens):
    """Explicit list of steps, an assignment instead of `+=`; the ids made a Python list and back
    (a list itself is wrong: the notebook's next cell calls `.tolist()` on the result)."""
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[list(range(n_tokens))]:
            out = layers[layer].output.clone()
            out[:, -1] = out[:, -1] + vector
            layers[layer].output = out
        ids = tracer.result.save()
    return torch.tensor(ids[0, -n_tokens:].tolist())


def gen_correct_float64(nn_model, prompt, vector, layer, n_tokens):
    """The vector kept in float64; the new tokens cut after the prompt's own length."""
    layers = decoder_layers(nn_model)
    prompt_len = len(nn_model.tokenizer(prompt)["input_ids"])
    vector = vector.double()
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None,
                           num_beams=1) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector.float()
        ids = tracer.result.save()
    return ids[0, prompt_len:].to(torch.int32)


GENERATE_CORRECT = [gen_correct_list, gen_correct_float64]


# ---------------------------------------------------------------- mistakes both runs used to accept

def gen_returns_list(nn_model, prompt, vector, layer, n_tokens):
    """The new ids as a Python list: the notebook's next cell calls `.tolist()` on the result."""
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, do_sample=False, eos_token_id=None) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:].tolist()


def gen_min_new_tokens(nn_model, prompt, vector, layer, n_tokens):
    """Forces n new tokens with `min_new_tokens` instead of `eos_token_id=None`: Hugging Face then
    bans the end-of-sequence token, so the text differs wherever the model would write it."""
    layers = decoder_layers(nn_model)
    with nn_model.generate(prompt, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                           do_sample=False) as tracer:
        for step in tracer.iter[:n_tokens]:
            layers[layer].output[:, -1] += vector
        ids = tracer.result.save()
    return ids[0, -n_tokens:]


# ---------------------------------------------------------------- a mistake whose message named another cause

def tv_replaces_state(nn_model, icl_prompt, zero_shot_prompt, layer):
    """Replaces the zero-shot prompt's final state with h instead of adding h to it."""
    layers = decoder_layers(nn_model)
    with nn_model.trace(icl_prompt):
        h = layers[layer].output[:, -1].save()
    with nn_model.trace(zero_shot_prompt):
        layers[layer].output[:, -1] = h
        logits = nn_model.output.logits.save()
    return logits


GENERATE.update({
    gen_returns_list: "returned a Python list",
    gen_min_new_tokens: "`min_new_tokens=n_tokens`",
})
TASK_VECTOR.update({
    tv_replaces_state: "you REPLACED the zero-shot prompt's final state",
})
