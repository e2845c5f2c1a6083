"""Plausible wrong learner implementations for notebook 05, each with the message it must get.

Written the way a learner would write them (current TransformerLens API), one mistake each.
"""

from __future__ import annotations

import torch


def _post(layer):
    return f"blocks.{layer}.hook_resid_post"


def _run(model, prompt, layer, edit, hook_name=None):
    """Run ``prompt`` with ``edit(resid) -> resid`` as the hook on ``resid_post`` of ``layer``."""
    def hook(resid, hook):
        return edit(resid)

    return model.run_with_hooks(prompt, fwd_hooks=[(hook_name or _post(layer), hook)])


# ---------------------------------------------------------------- ablate_function_vector

def afv_seed_expression(model, prompt, fv, layer):
    """The seed's code as written: `(resid @ fv_norm) * fv_norm` does not broadcast."""
    def remove_fv(resid, hook):
        fv_norm = fv / fv.norm()
        projection = (resid @ fv_norm) * fv_norm
        resid = resid - projection
        return resid

    return model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), remove_fv)])


def afv_not_normalised(model, prompt, fv, layer):
    return _run(model, prompt, layer, lambda r: r - (r @ fv)[..., None] * fv)


def afv_normalised_once(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ u)[..., None] * fv)


def afv_subtracts_vector(model, prompt, fv, layer):
    return _run(model, prompt, layer, lambda r: r - fv)


def afv_last_position_only(model, prompt, fv, layer):
    u = fv / fv.norm()

    def hook(resid, hook):
        resid[:, -1] = resid[:, -1] - (resid[:, -1] @ u)[..., None] * u
        return resid

    return model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), hook)])


def afv_wrong_axis(model, prompt, fv, layer):
    """The dot product summed over positions (dim 1) instead of d_model."""
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r * u).sum(dim=1, keepdim=True) * u)


def afv_normalises_in_place(model, prompt, fv, layer):
    """Right logits, but the caller's fv is now a unit vector."""
    fv /= fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ fv)[..., None] * fv)


def afv_normalises_alias(model, prompt, fv, layer):
    """`fv_norm = fv.detach()` shares storage with fv: the in-place division reaches the caller."""
    fv_norm = fv.detach()
    fv_norm /= fv_norm.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ fv_norm)[..., None] * fv_norm)


def afv_resid_pre(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ u)[..., None] * u,
                hook_name=f"blocks.{layer}.hook_resid_pre")


def afv_next_layer(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer + 1, lambda r: r - (r @ u)[..., None] * u)


def afv_returns_residual(model, prompt, fv, layer):
    """Returns the edited activation instead of the logits."""
    u = fv / fv.norm()
    _, cache = model.run_with_cache(prompt)
    resid = cache[_post(layer)]
    return resid - (resid @ u)[..., None] * u


def afv_hook_returns_nothing(model, prompt, fv, layer):
    u = fv / fv.norm()

    def hook(resid, hook):
        resid = resid - (resid @ u)[..., None] * u  # rebinds a local name, never returned

    return model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), hook)])


def afv_adds_projection(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r + (r @ u)[..., None] * u)


def afv_returns_projection(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: (r @ u)[..., None] * u)


def afv_subtracts_twice(model, prompt, fv, layer):
    u = fv / fv.norm()

    def hook(resid, hook):
        projection = (resid @ u)[..., None] * u
        resid -= projection
        return resid - projection

    return model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), hook)])


def afv_mean_coefficient(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r * u).mean(-1, keepdim=True) * u)


_FIRST = {}


def afv_keeps_first_direction(model, prompt, fv, layer):
    """Normalises once and keeps the direction in a global: the next call reuses it."""
    if "u" not in _FIRST:
        _FIRST["u"] = fv / fv.norm()
    u = _FIRST["u"]
    return _run(model, prompt, layer, lambda r: r - (r @ u)[..., None] * u)


def afv_leaks_hook(model, prompt, fv, layer):
    u = fv / fv.norm()
    model.add_hook(_post(layer), lambda r, hook: r - (r @ u)[..., None] * u)  # never removed
    return model(prompt)


def afv_last_logits(model, prompt, fv, layer):
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ u)[..., None] * u)[0, -1]


def afv_stub(model, prompt, fv, layer):
    raise NotImplementedError()


ABLATE_FUNCTION_VECTOR = {
    afv_seed_expression: "(resid @ fv_norm)[..., None] * fv_norm",
    afv_not_normalised: "fv was not normalised",
    afv_normalised_once: "normalised in only one of the two places",
    afv_subtracts_vector: "subtracted the vector fv itself",
    afv_last_position_only: "at the final position only (`resid[:, -1]`)",
    afv_wrong_axis: "wrong axis",
    afv_normalises_in_place: "changed the `fv` it was given, in place",
    afv_normalises_alias: "changed the `fv` it was given, in place",
    afv_resid_pre: "hook_resid_pre",
    afv_next_layer: "you projected at layer",
    afv_returns_residual: "that is the residual stream",
    afv_hook_returns_nothing: "nothing was projected out",
    afv_adds_projection: "ADDED instead of subtracted",
    afv_returns_projection: "returned the projection itself",
    afv_subtracts_twice: "subtracted twice",
    afv_mean_coefficient: "MEAN over d_model",
    afv_keeps_first_direction: "something from the first call survives",
    afv_leaks_hook: "left hooks registered",
    afv_last_logits: "expected (1,",
    afv_stub: "not implemented yet",
}


# Correct, written differently from the reference: the check must accept every one.

def afv_correct_hooks_context(model, prompt, fv, layer):
    """`with model.hooks(...)`, an in-place edit of the activation (allowed), einsum."""
    u = fv / fv.norm()

    def hook(resid, hook):
        resid -= torch.einsum("bpd,d->bp", resid, u)[..., None] * u
        return resid

    with model.hooks(fwd_hooks=[(_post(layer), hook)]):
        return model(prompt)


def afv_correct_float64(model, prompt, fv, layer):
    """The projection computed in float64, logits returned in float64."""
    u = (fv / fv.norm()).double()

    def hook(resid, hook):
        r = resid.double()
        return (r - (r @ u)[..., None] * u).to(resid.dtype)

    return model.run_with_hooks(prompt, fwd_hooks=[(_post(layer), hook)]).double()


def afv_correct_projection_matrix(model, prompt, fv, layer):
    """`resid @ (I - u u^T)`, with the un-normalised fv divided by |fv|^2."""
    P = torch.eye(fv.shape[0]) - torch.outer(fv, fv) / (fv @ fv)
    return _run(model, prompt, layer, lambda r: r @ P)


def afv_correct_batched(model, prompt, fv, layer):
    """A helper written for a batch of prompts, called with a list of one; `.T` broadcasting."""
    def ablate_many(prompts):
        tokens = model.to_tokens(prompts)
        u = torch.nn.functional.normalize(fv, dim=0)

        def hook(resid, hook):
            coeff = resid @ u  # [batch, pos]
            return resid - coeff.unsqueeze(-1) * u

        return model.run_with_hooks(tokens, fwd_hooks=[(_post(layer), hook)])

    return ablate_many([prompt])[:1]


def afv_correct_resid_pre_next(model, prompt, fv, layer):
    """`hook_resid_pre` of block layer + 1 is the same tensor as `hook_resid_post` of layer."""
    u = fv / fv.norm()
    return _run(model, prompt, layer, lambda r: r - (r @ u)[..., None] * u,
                hook_name=f"blocks.{layer + 1}.hook_resid_pre")


ABLATE_FUNCTION_VECTOR_CORRECT = [afv_correct_hooks_context, afv_correct_float64,
                                  afv_correct_projection_matrix, afv_correct_batched,
                                  afv_correct_resid_pre_next]
