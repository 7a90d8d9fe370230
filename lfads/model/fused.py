"""The fused recurrent loops: forward without autograd bookkeeping, backward written out by hand.

Autograd would record every small op of every time step, then run a backward
node for each, and compute each recurrent weight's gradient once per step
(a small matmul plus an accumulation). Here each loop is one
`torch.autograd.Function`: the forward runs the steps with autograd off and
keeps only the gate activations; the backward runs the steps in reverse with
the handful of elementwise ops and matmuls each needs, and computes every
weight gradient at the end in one matmul over all steps. The numbers are the
ones of the plain loops (`lfads.model.gru.scan_reference`,
`lfads.model.decoder.unroll_plain`); tests/test_model_paths.py compares losses
and every gradient. `lfads.model.loops` decides where these loops are used.

The forward runs `lfads.model.gru.gru_step`; its backward, `_gru_backward`, is written here:
    z, r = sigmoid(x_zr + h @ U_zr)       n = tanh(x_n + (r * h) @ U_n)
    h' = clip(n + z * (h - n))
A clipped element passes no gradient (|h'| = clip counts as clipped).

The decoder's loop couples a controller GRU, the inferred-input posterior and
the generator GRU through the factors:
    c_t = GRU_c([ci_t | f_{t-1} * mf_t], c_{t-1});  [mean_t | logvar_t] = c_t @ W_co + b_co
    u_t = mean_t + exp(logvar_t / 2) * eps_t;       g_t = GRU_g([u_t | ext_t], g_{t-1})
    f_t = (g_t * mg_{t+1}) @ W_fac,                 f_{-1} = (g_init * mg_0) @ W_fac
with the ci and ext halves of the input projections (and biases) precomputed
for all bins, dropout masks mf, mg and standard noise eps drawn before the loop.

Every tensor has the members' axis P before the trials' (members are independent: each member's
matrices multiply only its own rows, with `torch.baddbmm`/`bmm`). Activations are kept
time-major, (T, P, B, width), so that every step reads and writes contiguous blocks; outputs are
returned as (P, B, T, width) views.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from lfads.model.decoder import Decoder, DecoderNoise, DecoderOutput
from lfads.model.gru import gru_step
from lfads.model.members import member_linear


def _bmm_t(a, b):
    """a @ b^T, batched."""
    return torch.bmm(a, b.transpose(1, 2))


def _gru_backward(dh_new, h_new, h, gates, n, u_zr, u_n, clip, out=(None, None)):
    """Gradients of one `gru_step`: (d x_zr, d x_n, d h).

    out: optional (d x_zr, d x_n) tensors to write into.
    """
    d_zr_out, d_n_out = out
    if not math.isinf(clip):
        dh_new = dh_new * (h_new.abs() < clip)
    z, r = gates.chunk(2, dim=-1)
    dn = torch.mul(dh_new * (1.0 - z), 1.0 - n * n, out=d_n_out)  # through tanh: d(x_n + (r h) U_n)
    drh = _bmm_t(dn, u_n)
    # [d z | d r] through the sigmoids, each half written in place (no concatenated copy)
    d_gates = d_zr_out if d_zr_out is not None else torch.empty_like(gates)
    d_z, d_r = d_gates.chunk(2, dim=-1)
    torch.mul(dh_new * (h - n), z * (1.0 - z), out=d_z)
    torch.mul(drh * h, r * (1.0 - r), out=d_r)
    dh = dh_new * z + drh * r + _bmm_t(d_gates, u_zr)
    return d_gates, dn, dh


def _time_major(x: torch.Tensor | None, time_dim: int) -> torch.Tensor | None:
    return None if x is None else x.movedim(time_dim, 0)


class StackedGRUSequence(torch.autograd.Function):
    """K independent GRUs of one size over sequences of one length, in one loop.

    x_zr (K, B, T, 2H), x_n (K, B, T, H): projected inputs (with bias);
    h0 (K, B, H); u_zr (K, H, 2H), u_n (K, H, H): transposed recurrent weights.
    -> states (K, B, T, H).
    """

    @staticmethod
    def forward(ctx, x_zr, x_n, h0, u_zr, u_n, clip: float):
        keep = any(ctx.needs_input_grad)  # inference keeps no activations
        n_bins = x_zr.shape[2]
        x_zr, x_n = _time_major(x_zr, 2), _time_major(x_n, 2)  # (T, K, B, .)
        states = h0.new_empty(n_bins, *h0.shape)
        gates = x_zr.new_empty(x_zr.shape) if keep else None
        cands = x_n.new_empty(x_n.shape) if keep else None
        h = h0
        for t in range(n_bins):
            h, _, _ = gru_step(
                x_zr[t],
                x_n[t],
                h,
                u_zr,
                u_n,
                clip,
                (states[t], gates[t] if keep else None, cands[t] if keep else None),
            )
        if keep:
            ctx.save_for_backward(h0, states, gates, cands, u_zr, u_n)
        ctx.clip = clip
        return states.movedim(0, 2)

    @staticmethod
    def backward(ctx, d_states):
        h0, states, gates, cands, u_zr, u_n = ctx.saved_tensors
        d_states = _time_major(d_states, 2)
        n_bins, k, _, hidden = states.shape
        previous = torch.cat([h0.unsqueeze(0), states[:-1]])  # (T, K, B, H) state before each step
        d_zr, d_n = torch.empty_like(gates), torch.empty_like(cands)
        dh = torch.zeros_like(h0)
        for t in reversed(range(n_bins)):
            _, _, dh = _gru_backward(
                d_states[t] + dh,
                states[t],
                previous[t],
                gates[t],
                cands[t],
                u_zr,
                u_n,
                ctx.clip,
                (d_zr[t], d_n[t]),
            )
        r = gates[..., hidden:]

        # per GRU, sum over steps and trials of inputs^T grads: one bmm
        def weight_grad(inputs, grads):
            inputs, grads = inputs.transpose(0, 1), grads.transpose(0, 1)  # (K, T, B, .)
            return torch.bmm(
                inputs.reshape(k, -1, inputs.shape[-1]).transpose(1, 2),
                grads.reshape(k, -1, grads.shape[-1]),
            )

        return (
            d_zr.movedim(0, 2),
            d_n.movedim(0, 2),
            dh,
            weight_grad(previous, d_zr),
            weight_grad(r * previous, d_n),
            None,
        )


class DecoderLoopInputs(NamedTuple):
    """What `DecoderLoop` reads, by name (the module docstring has the formulas).

    `autograd.Function.apply` takes positional arguments: `DecoderLoop.apply(*inputs)`, and the
    backward returns its gradients as one of these (None where there is none).
    Controller fields are None without a controller. Time axis: T = T + F bins of the model;
    P: members.
    """

    con_zr: torch.Tensor | None  # (P, B, T, 2C) controller gates' input projection (ci, bias)
    con_n: torch.Tensor | None  # (P, B, T, C) controller candidate's input projection
    gen_zr: torch.Tensor  # (P, B, T, 2G) generator gates' input projection (ext, bias)
    gen_n: torch.Tensor  # (P, B, T, G) generator candidate's input projection
    gen_init: torch.Tensor  # (P, B, G) g_init
    con_h0: torch.Tensor | None  # (P, B, C) controller state before the first bin
    w_fac_zr: torch.Tensor | None  # (P, F, 2C) factors -> controller gates (transposed weights)
    w_fac_n: torch.Tensor | None  # (P, F, C) factors -> controller candidate
    uc_zr: torch.Tensor | None  # (P, C, 2C) controller recurrent weights of the gates
    uc_n: torch.Tensor | None  # (P, C, C) controller recurrent weights of the candidate
    w_co: torch.Tensor | None  # (P, C, 2K) controller state -> [mean | logvar] of u
    b_co: torch.Tensor | None  # (P, 2K)
    w_u_zr: torch.Tensor | None  # (P, K, 2G) u -> generator gates
    w_u_n: torch.Tensor | None  # (P, K, G) u -> generator candidate
    ug_zr: torch.Tensor  # (P, G, 2G) generator recurrent weights of the gates
    ug_n: torch.Tensor  # (P, G, G) generator recurrent weights of the candidate
    w_factor: torch.Tensor  # (P, G, F) generator state -> factors (rows normalised)
    eps: torch.Tensor | None  # (T, P, B, K) standard noise of u, None: u is the mean
    factor_masks: torch.Tensor | None  # (T, P, B, F) dropout mf of the controller's factor input
    gen_masks: torch.Tensor | None  # (T + 1, P, B, G) dropout mg of the state before each readout
    clip: float  # every state is clipped to +-clip


class DecoderLoopOutputs(NamedTuple):
    """What `DecoderLoop` returns, each (P, B, T, .); controller outputs are 0 wide without one."""

    gen_states: torch.Tensor  # g_t
    factors: torch.Tensor  # f_t
    con_states: torch.Tensor  # c_t
    co_mean: torch.Tensor  # mean_t
    co_std: torch.Tensor  # exp(logvar_t / 2)
    u: torch.Tensor  # u_t, the generator's inferred input


class _DecoderLoopSaved(NamedTuple):
    """What the forward keeps for the backward (time-major activations, (T, P, B, .))."""

    gen_init: torch.Tensor
    con_h0: torch.Tensor | None
    w_fac_zr: torch.Tensor | None
    w_fac_n: torch.Tensor | None
    uc_zr: torch.Tensor | None
    uc_n: torch.Tensor | None
    w_co: torch.Tensor | None
    w_u_zr: torch.Tensor | None
    w_u_n: torch.Tensor | None
    ug_zr: torch.Tensor
    ug_n: torch.Tensor
    w_factor: torch.Tensor
    eps: torch.Tensor | None
    mf: torch.Tensor | None
    mg: torch.Tensor | None
    gs: torch.Tensor  # generator states
    fs: torch.Tensor  # factors
    g_gates: torch.Tensor  # generator [z | r]
    g_ns: torch.Tensor  # generator candidates
    cs: torch.Tensor  # controller states
    c_gates: torch.Tensor | None
    c_ns: torch.Tensor | None
    stds: torch.Tensor
    us: torch.Tensor


class DecoderLoop(torch.autograd.Function):
    """The decoder's time loop (see the module docstring): `DecoderLoopInputs` in,
    `DecoderLoopOutputs` out. Call it through `unroll_fused`."""

    @staticmethod
    def forward(ctx, *args):
        inputs = DecoderLoopInputs(*args)
        con_zr, con_n, gen_zr, gen_n = inputs.con_zr, inputs.con_n, inputs.gen_zr, inputs.gen_n
        gen_init, con_h0, w_factor = inputs.gen_init, inputs.con_h0, inputs.w_factor
        w_fac_zr, w_fac_n, uc_zr, uc_n = inputs.w_fac_zr, inputs.w_fac_n, inputs.uc_zr, inputs.uc_n
        w_co, b_co, w_u_zr, w_u_n = inputs.w_co, inputs.b_co, inputs.w_u_zr, inputs.w_u_n
        ug_zr, ug_n, eps, clip = inputs.ug_zr, inputs.ug_n, inputs.eps, inputs.clip
        mf, mg = inputs.factor_masks, inputs.gen_masks
        controller = con_zr is not None
        keep = any(ctx.needs_input_grad)  # inference keeps no activations
        n_members, batch, n_bins = gen_zr.shape[:3]
        gen_zr, gen_n, con_zr, con_n = (_time_major(x, 2) for x in (gen_zr, gen_n, con_zr, con_n))

        def buffer(width: int, needed: bool = True) -> torch.Tensor | None:
            return gen_init.new_empty(n_bins, n_members, batch, width) if needed else None

        gs, fs = buffer(ug_n.shape[1]), buffer(w_factor.shape[2])
        g_gates, g_ns = buffer(ug_zr.shape[2], keep), buffer(ug_n.shape[2], keep)
        if controller:
            n_u = w_u_zr.shape[1]
            cs, means, stds, us = buffer(uc_n.shape[1]), buffer(n_u), buffer(n_u), buffer(n_u)
            c_gates, c_ns = buffer(uc_zr.shape[2], keep), buffer(uc_n.shape[2], keep)
        g, c = gen_init, con_h0
        f = torch.bmm(g * mg[0] if mg is not None else g, w_factor)
        for t in range(n_bins):
            x_zr, x_n = gen_zr[t], gen_n[t]  # the generator's projected inputs
            if controller:
                fi = f * mf[t] if mf is not None else f
                c, _, _ = gru_step(
                    torch.baddbmm(con_zr[t], fi, w_fac_zr),
                    torch.baddbmm(con_n[t], fi, w_fac_n),
                    c,
                    uc_zr,
                    uc_n,
                    clip,
                    (cs[t], c_gates[t] if keep else None, c_ns[t] if keep else None),
                )
                mean, logvar = torch.baddbmm(b_co.unsqueeze(1), c, w_co).chunk(2, dim=2)
                means[t] = mean
                std = torch.exp(0.5 * logvar, out=stds[t])
                u = torch.addcmul(mean, std, eps[t], out=us[t]) if eps is not None else mean
                x_zr, x_n = torch.baddbmm(x_zr, u, w_u_zr), torch.baddbmm(x_n, u, w_u_n)
            g, _, _ = gru_step(
                x_zr,
                x_n,
                g,
                ug_zr,
                ug_n,
                clip,
                (gs[t], g_gates[t] if keep else None, g_ns[t] if keep else None),
            )
            f = torch.bmm(g * mg[t + 1] if mg is not None else g, w_factor, out=fs[t])
        if not controller:
            cs = means = stds = us = gen_init.new_zeros(n_bins, n_members, batch, 0)
            c_gates = c_ns = None
        elif eps is None:  # u is the mean (a separate output tensor)
            us = means.clone()
        ctx.clip, ctx.controller = clip, controller
        if keep:
            ctx.save_for_backward(
                *_DecoderLoopSaved(
                    gen_init=gen_init,
                    con_h0=con_h0,
                    w_fac_zr=w_fac_zr,
                    w_fac_n=w_fac_n,
                    uc_zr=uc_zr,
                    uc_n=uc_n,
                    w_co=w_co,
                    w_u_zr=w_u_zr,
                    w_u_n=w_u_n,
                    ug_zr=ug_zr,
                    ug_n=ug_n,
                    w_factor=w_factor,
                    eps=eps,
                    mf=mf,
                    mg=mg,
                    gs=gs,
                    fs=fs,
                    g_gates=g_gates,
                    g_ns=g_ns,
                    cs=cs,
                    c_gates=c_gates,
                    c_ns=c_ns,
                    stds=stds,
                    us=us,
                )
            )
        outputs = DecoderLoopOutputs(
            gen_states=gs, factors=fs, con_states=cs, co_mean=means, co_std=stds, u=us
        )
        return tuple(x.movedim(0, 2) for x in outputs)

    @staticmethod
    def backward(ctx, *output_grads):
        saved = _DecoderLoopSaved(*ctx.saved_tensors)
        gen_init, con_h0, w_factor = saved.gen_init, saved.con_h0, saved.w_factor
        w_fac_zr, w_fac_n, uc_zr, uc_n = saved.w_fac_zr, saved.w_fac_n, saved.uc_zr, saved.uc_n
        w_co, w_u_zr, w_u_n, ug_zr, ug_n = (
            saved.w_co,
            saved.w_u_zr,
            saved.w_u_n,
            saved.ug_zr,
            saved.ug_n,
        )
        eps, mf, mg = saved.eps, saved.mf, saved.mg
        gs, fs, g_gates, g_ns = saved.gs, saved.fs, saved.g_gates, saved.g_ns
        cs, c_gates, c_ns, stds, us = saved.cs, saved.c_gates, saved.c_ns, saved.stds, saved.us
        d_out = DecoderLoopOutputs(*(_time_major(x, 2) for x in output_grads))
        d_g_out, d_f_out, d_c_out = d_out.gen_states, d_out.factors, d_out.con_states
        d_mean_out, d_std_out, d_u_out = d_out.co_mean, d_out.co_std, d_out.u
        clip, controller = ctx.clip, ctx.controller
        n_bins = gs.shape[0]
        g_prev = torch.cat([gen_init.unsqueeze(0), gs[:-1]])  # (T, B, G) state before each bin
        d_g_zr, d_g_n = torch.empty_like(g_gates), torch.empty_like(g_ns)
        # gradients of f_{-1} .. f_{T-1}
        d_fs = torch.empty(n_bins + 1, *fs.shape[1:], dtype=fs.dtype, device=fs.device)
        dg, df = torch.zeros_like(gen_init), torch.zeros_like(fs[0])
        if controller:
            c_prev = torch.cat([con_h0.unsqueeze(0), cs[:-1]])
            d_c_zr, d_c_n = torch.empty_like(c_gates), torch.empty_like(c_ns)
            d_co = gs.new_empty(*gs.shape[:3], 2 * stds.shape[3])
            n_u = stds.shape[3]
            dc = torch.zeros_like(con_h0)
        for t in reversed(range(n_bins)):
            # f_t feeds the factors output and bin t + 1
            df = torch.add(d_f_out[t], df, out=d_fs[t + 1])
            d_gm = _bmm_t(df, w_factor)
            dg_new = d_g_out[t] + dg + (d_gm * mg[t + 1] if mg is not None else d_gm)
            _, _, dg = _gru_backward(
                dg_new,
                gs[t],
                g_prev[t],
                g_gates[t],
                g_ns[t],
                ug_zr,
                ug_n,
                clip,
                (d_g_zr[t], d_g_n[t]),
            )
            if controller:
                du = torch.baddbmm(
                    torch.baddbmm(d_u_out[t], d_g_zr[t], w_u_zr.transpose(1, 2)),
                    d_g_n[t],
                    w_u_n.transpose(1, 2),
                )
                # u = mean + std * eps, std = exp(logvar / 2)
                d_std = d_std_out[t] + du * eps[t] if eps is not None else d_std_out[t]
                torch.add(d_mean_out[t], du, out=d_co[t, ..., :n_u])
                torch.mul(d_std, 0.5 * stds[t], out=d_co[t, ..., n_u:])
                dc_new = torch.baddbmm(d_c_out[t] + dc, d_co[t], w_co.transpose(1, 2))
                _, _, dc = _gru_backward(
                    dc_new,
                    cs[t],
                    c_prev[t],
                    c_gates[t],
                    c_ns[t],
                    uc_zr,
                    uc_n,
                    clip,
                    (d_c_zr[t], d_c_n[t]),
                )
                d_fi = torch.baddbmm(_bmm_t(d_c_zr[t], w_fac_zr), d_c_n[t], w_fac_n.transpose(1, 2))
                df = d_fi * mf[t] if mf is not None else d_fi
            else:
                df = torch.zeros_like(df)
        d_fs[0] = df  # f_{-1} = (g_init * mg_0) @ w_factor
        d_init_factor = _bmm_t(df, w_factor)
        d_gen_init = dg + (d_init_factor * mg[0] if mg is not None else d_init_factor)

        def weight_grad(inputs, grads):
            """Per member, the sum over bins and trials of inputs^T grads: one bmm.

            inputs (T, P, B, a), grads (T, P, B, b) -> (P, a, b)."""
            inputs, grads = inputs.transpose(0, 1), grads.transpose(0, 1)  # (P, T, B, .)
            return torch.bmm(
                inputs.reshape(inputs.shape[0], -1, inputs.shape[-1]).transpose(1, 2),
                grads.reshape(grads.shape[0], -1, grads.shape[-1]),
            )

        hidden = gs.shape[3]
        # (T + 1, P, B, G): g_{-1} = g_init .. g_{T-1}
        factor_inputs = torch.cat([gen_init.unsqueeze(0), gs])
        if mg is not None:
            factor_inputs = factor_inputs * mg
        grads: dict[str, torch.Tensor] = {
            "gen_zr": d_g_zr.movedim(0, 2),
            "gen_n": d_g_n.movedim(0, 2),
            "gen_init": d_gen_init,
            "ug_zr": weight_grad(g_prev, d_g_zr),
            "ug_n": weight_grad(g_gates[..., hidden:] * g_prev, d_g_n),
            "w_factor": weight_grad(factor_inputs, d_fs),
        }
        if controller:
            # f_{t-1} per bin
            fi = torch.cat([torch.bmm(factor_inputs[0], w_factor).unsqueeze(0), fs[:-1]])
            if mf is not None:
                fi = fi * mf
            con_hidden = cs.shape[3]
            grads.update(con_zr=d_c_zr.movedim(0, 2), con_n=d_c_n.movedim(0, 2), con_h0=dc)
            grads.update(w_fac_zr=weight_grad(fi, d_c_zr), w_fac_n=weight_grad(fi, d_c_n))
            grads["uc_zr"] = weight_grad(c_prev, d_c_zr)
            grads["uc_n"] = weight_grad(c_gates[..., con_hidden:] * c_prev, d_c_n)
            grads.update(w_co=weight_grad(cs, d_co), b_co=d_co.sum(dim=(0, 2)))
            grads.update(w_u_zr=weight_grad(us, d_g_zr), w_u_n=weight_grad(us, d_g_n))
        # eps, the masks and clip get none
        return tuple(grads.get(name) for name in DecoderLoopInputs._fields)


def unroll_fused(
    decoder: Decoder,
    gen_init: torch.Tensor,
    ci: torch.Tensor,
    ext_input: torch.Tensor,
    noise: DecoderNoise,
) -> DecoderOutput:
    """The decoder's unroll as one `DecoderLoop`: the numbers of `lfads.model.decoder.unroll_plain`.

    The inputs known before the loop (controller inputs, external inputs, biases) are projected
    for all bins in one matmul, and the weights split and transposed once.
    gen_init (P, B, G); ci (P, B, T + F, ci_dim); ext_input (P, B, T + F, ext_input_dim).
    """
    gen, n_u = decoder.generator, decoder.co_dim
    w_u, w_ext = gen.weight_ih.split([n_u, gen.input_size - n_u], dim=2)
    n_members, batch, n_bins, _ = ci.shape
    if ext_input.shape[3]:
        gen_proj = member_linear(ext_input, w_ext, gen.bias_ih)
    else:  # no external inputs: the bias alone, broadcast (no (P, B, T + F, 3G) tensor of zeros)
        gen_proj = gen.bias_ih[:, None, None].expand(n_members, batch, n_bins, -1)
    gen_zr, gen_n = gen.split_projection(gen_proj)  # (P, B, T + F, 2G), (P, B, T + F, G)
    w_u_zr, w_u_n = gen.split_projection(w_u.transpose(1, 2))
    ug_zr, ug_n = gen.split_recurrent()
    w_factor = F.normalize(decoder.factor_linear.weight, p=2, dim=2).transpose(1, 2)  # (P, G, fac)
    controller: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("con_zr", "con_n", "con_h0", "w_fac_zr", "w_fac_n", "uc_zr", "uc_n", "w_co", "b_co")
    )
    if decoder.use_controller:
        con, ci_dim = decoder.controller, decoder.ci_dim
        w_ci, w_fac = con.weight_ih.split([ci_dim, con.input_size - ci_dim], dim=2)
        controller["con_zr"], controller["con_n"] = con.split_projection(
            member_linear(ci, w_ci, con.bias_ih)
        )
        controller["w_fac_zr"], controller["w_fac_n"] = con.split_projection(w_fac.transpose(1, 2))
        controller["uc_zr"], controller["uc_n"] = con.split_recurrent()
        controller["con_h0"] = decoder.con_h0.unsqueeze(1).expand(n_members, batch, -1)
        controller["w_co"] = decoder.co_linear.weight.transpose(1, 2)
        controller["b_co"] = decoder.co_linear.bias
    inputs = DecoderLoopInputs(
        gen_zr=gen_zr,
        gen_n=gen_n,
        gen_init=gen_init,
        w_u_zr=w_u_zr,
        w_u_n=w_u_n,
        ug_zr=ug_zr,
        ug_n=ug_n,
        w_factor=w_factor,
        eps=noise.eps,
        factor_masks=noise.factor_masks,
        gen_masks=noise.gen_masks,
        clip=gen.clip,
        **controller,
    )
    outputs = DecoderLoopOutputs(*DecoderLoop.apply(*inputs))
    return DecoderOutput(
        gen_states=outputs.gen_states,
        factors=outputs.factors,
        co_mean=outputs.co_mean,
        co_std=outputs.co_std,
    )
