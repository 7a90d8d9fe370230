"""The fast path's recurrent loops: forward without autograd bookkeeping, backward written out by hand.

Autograd would record every small op of every time step, then run a backward
node for each, and compute each recurrent weight's gradient once per step
(a small matmul plus an accumulation). Here each loop is one
`torch.autograd.Function`: the forward runs the steps with autograd off and
keeps only the gate activations; the backward runs the steps in reverse with
the handful of elementwise ops and matmuls each needs, and computes every
weight gradient at the end in one matmul over all steps. The numbers are the
ones of the plain reference path (`rnn_impl: reference`); the tests compare
losses and every gradient.

GRU step (TF LFADS form, see `lfads.model.gru`), with transposed weights:
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

Activations are kept time-major, (T, ..., width), so that every step reads
and writes contiguous blocks; outputs are returned as (B, T, width) views.
"""

from __future__ import annotations

import math

import torch


def _tanh(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh; on the CPU as 2 sigmoid(2x) - 1, since torch's CPU tanh is several times slower than its
    sigmoid (measured 125 vs 16 us on 600 x 200 floats; 46 us this way). Absolute error ~1 ulp of 1.
    Overwrites x on the CPU: pass a temporary."""
    if x.device.type != "cpu":
        return torch.tanh(x, out=out)
    return torch.sigmoid(x.mul_(2.0), out=out).mul_(2.0).sub_(1.0)


def _gru_forward(x_zr, x_n, h, u_zr, u_n, clip, mm, out=(None, None, None)):
    """One step; returns the new state, the gate activations [z | r] and the candidate n.

    out: optional (state, gates, candidate) tensors to write into.
    """
    h_out, gates_out, n_out = out
    gates = torch.sigmoid(mm(x_zr, h, u_zr), out=gates_out)
    z, r = gates.chunk(2, dim=-1)
    n = _tanh(mm(x_n, r * h, u_n), out=n_out)
    h_new = torch.lerp(n, h, z, out=h_out)
    if not math.isinf(clip):
        h_new.clamp_(-clip, clip)
    return h_new, gates, n


def _gru_backward(dh_new, h_new, h, gates, n, u_zr, u_n, clip, mm_t, out=(None, None)):
    """Gradients of one step: (d x_zr, d x_n, d h). mm_t(a, b) = a @ b^T (batched or not).

    out: optional (d x_zr, d x_n) tensors to write into.
    """
    d_zr_out, d_n_out = out
    if not math.isinf(clip):
        dh_new = dh_new * (h_new.abs() < clip)
    z, r = gates.chunk(2, dim=-1)
    dn = torch.mul(dh_new * (1.0 - z), 1.0 - n * n, out=d_n_out)  # through tanh: d(x_n + (r h) U_n)
    drh = mm_t(dn, u_n)
    d_gates = torch.mul(
        torch.cat([dh_new * (h - n), drh * h], dim=-1), gates * (1.0 - gates), out=d_zr_out
    )
    dh = dh_new * z + drh * r + mm_t(d_gates, u_zr)
    return d_gates, dn, dh


def _addmm(x, h, u):
    return torch.addmm(x, h, u)


def _baddbmm(x, h, u):
    return torch.baddbmm(x, h, u)


def _mm_t(a, b):
    return a @ b.T


def _bmm_t(a, b):
    return torch.bmm(a, b.transpose(1, 2))


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
            h, _, _ = _gru_forward(
                x_zr[t],
                x_n[t],
                h,
                u_zr,
                u_n,
                clip,
                _baddbmm,
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
                _bmm_t,
                (d_zr[t], d_n[t]),
            )
        r = gates[..., hidden:]

        def weight_grad(
            inputs, grads
        ):  # per GRU, sum over steps and trials of inputs^T grads: one bmm
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


class DecoderLoop(torch.autograd.Function):
    """The decoder's time loop (see the module docstring).

    Inputs: con_zr (B, T, 2C), con_n (B, T, C) or None without a controller;
    gen_zr (B, T, 2G), gen_n (B, T, G); gen_init (B, G); con_h0 (B, C);
    transposed weights w_fac_zr (F, 2C), w_fac_n (F, C), uc_zr (C, 2C), uc_n (C, C),
    w_co (C, 2K), b_co (2K,), w_u_zr (K, 2G), w_u_n (K, G), ug_zr (G, 2G), ug_n (G, G),
    w_factor (G, F); eps (T, B, K) or None (u = mean); masks mf (T, B, F), mg (T + 1, B, G) or None.
    Outputs (B, T, .): gen_states, factors, con_states, co_mean, co_std, u.
    """

    @staticmethod
    def forward(
        ctx,
        con_zr,
        con_n,
        gen_zr,
        gen_n,
        gen_init,
        con_h0,
        w_fac_zr,
        w_fac_n,
        uc_zr,
        uc_n,
        w_co,
        b_co,
        w_u_zr,
        w_u_n,
        ug_zr,
        ug_n,
        w_factor,
        eps,
        mf,
        mg,
        clip: float,
    ):
        controller = con_zr is not None
        keep = any(ctx.needs_input_grad)  # inference keeps no activations
        batch, n_bins = gen_zr.shape[:2]
        gen_zr, gen_n, con_zr, con_n = (_time_major(x, 1) for x in (gen_zr, gen_n, con_zr, con_n))

        def buffer(width: int, needed: bool = True) -> torch.Tensor | None:
            return gen_init.new_empty(n_bins, batch, width) if needed else None

        gs, fs = buffer(ug_n.shape[0]), buffer(w_factor.shape[1])
        g_gates, g_ns = buffer(ug_zr.shape[1], keep), buffer(ug_n.shape[1], keep)
        if controller:
            n_u = w_u_zr.shape[0]
            cs, means, stds, us = buffer(uc_n.shape[0]), buffer(n_u), buffer(n_u), buffer(n_u)
            c_gates, c_ns = buffer(uc_zr.shape[1], keep), buffer(uc_n.shape[1], keep)
        g, c = gen_init, con_h0
        f = (g * mg[0] if mg is not None else g) @ w_factor
        for t in range(n_bins):
            x_zr, x_n = gen_zr[t], gen_n[t]  # the generator's projected inputs
            if controller:
                fi = f * mf[t] if mf is not None else f
                c, _, _ = _gru_forward(
                    torch.addmm(con_zr[t], fi, w_fac_zr),
                    torch.addmm(con_n[t], fi, w_fac_n),
                    c,
                    uc_zr,
                    uc_n,
                    clip,
                    _addmm,
                    (cs[t], c_gates[t] if keep else None, c_ns[t] if keep else None),
                )
                mean, logvar = torch.addmm(b_co, c, w_co).chunk(2, dim=1)
                means[t] = mean
                std = torch.exp(0.5 * logvar, out=stds[t])
                u = torch.addcmul(mean, std, eps[t], out=us[t]) if eps is not None else mean
                x_zr, x_n = torch.addmm(x_zr, u, w_u_zr), torch.addmm(x_n, u, w_u_n)
            g, _, _ = _gru_forward(
                x_zr,
                x_n,
                g,
                ug_zr,
                ug_n,
                clip,
                _addmm,
                (gs[t], g_gates[t] if keep else None, g_ns[t] if keep else None),
            )
            f = torch.mm(g * mg[t + 1] if mg is not None else g, w_factor, out=fs[t])
        if not controller:
            cs = means = stds = us = gen_init.new_zeros(n_bins, batch, 0)
            c_gates = c_ns = None
        elif eps is None:  # u is the mean (a separate output tensor)
            us = means.clone()
        ctx.clip, ctx.controller = clip, controller
        if keep:
            ctx.save_for_backward(
                gen_init,
                con_h0,
                w_fac_zr,
                w_fac_n,
                uc_zr,
                uc_n,
                w_co,
                w_u_zr,
                w_u_n,
                ug_zr,
                ug_n,
                w_factor,
                eps,
                mf,
                mg,
                gs,
                fs,
                g_gates,
                g_ns,
                cs,
                c_gates,
                c_ns,
                stds,
                us,
            )
        return tuple(x.transpose(0, 1) for x in (gs, fs, cs, means, stds, us))

    @staticmethod
    def backward(ctx, d_g_out, d_f_out, d_c_out, d_mean_out, d_std_out, d_u_out):
        (
            gen_init,
            con_h0,
            w_fac_zr,
            w_fac_n,
            uc_zr,
            uc_n,
            w_co,
            w_u_zr,
            w_u_n,
            ug_zr,
            ug_n,
            w_factor,
            eps,
            mf,
            mg,
            gs,
            fs,
            g_gates,
            g_ns,
            cs,
            c_gates,
            c_ns,
            stds,
            us,
        ) = ctx.saved_tensors
        d_g_out, d_f_out, d_c_out, d_mean_out, d_std_out, d_u_out = (
            _time_major(x, 1) for x in (d_g_out, d_f_out, d_c_out, d_mean_out, d_std_out, d_u_out)
        )
        clip, controller = ctx.clip, ctx.controller
        n_bins = gs.shape[0]
        g_prev = torch.cat(
            [gen_init.unsqueeze(0), gs[:-1]]
        )  # (T, B, G) generator state before each bin
        d_g_zr, d_g_n = torch.empty_like(g_gates), torch.empty_like(g_ns)
        d_fs = torch.empty(
            n_bins + 1, *fs.shape[1:], dtype=fs.dtype, device=fs.device
        )  # f_{-1} .. f_{T-1}
        dg, df = torch.zeros_like(gen_init), torch.zeros_like(fs[0])
        if controller:
            c_prev = torch.cat([con_h0.unsqueeze(0), cs[:-1]])
            d_c_zr, d_c_n = torch.empty_like(c_gates), torch.empty_like(c_ns)
            d_co = gs.new_empty(n_bins, gs.shape[1], 2 * stds.shape[2])
            n_u = stds.shape[2]
            dc = torch.zeros_like(con_h0)
        for t in reversed(range(n_bins)):
            df = torch.add(
                d_f_out[t], df, out=d_fs[t + 1]
            )  # f_t feeds the factors output and bin t + 1
            d_gm = df @ w_factor.T
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
                _mm_t,
                (d_g_zr[t], d_g_n[t]),
            )
            if controller:
                du = torch.addmm(torch.addmm(d_u_out[t], d_g_zr[t], w_u_zr.T), d_g_n[t], w_u_n.T)
                # u = mean + std * eps, std = exp(logvar / 2)
                d_std = d_std_out[t] + du * eps[t] if eps is not None else d_std_out[t]
                torch.add(d_mean_out[t], du, out=d_co[t, :, :n_u])
                torch.mul(d_std, 0.5 * stds[t], out=d_co[t, :, n_u:])
                dc_new = torch.addmm(d_c_out[t] + dc, d_co[t], w_co.T)
                _, _, dc = _gru_backward(
                    dc_new,
                    cs[t],
                    c_prev[t],
                    c_gates[t],
                    c_ns[t],
                    uc_zr,
                    uc_n,
                    clip,
                    _mm_t,
                    (d_c_zr[t], d_c_n[t]),
                )
                d_fi = torch.addmm(d_c_zr[t] @ w_fac_zr.T, d_c_n[t], w_fac_n.T)
                df = d_fi * mf[t] if mf is not None else d_fi
            else:
                df = torch.zeros_like(df)
        d_fs[0] = df  # f_{-1} = (g_init * mg_0) @ w_factor
        d_init_factor = df @ w_factor.T
        d_gen_init = dg + (d_init_factor * mg[0] if mg is not None else d_init_factor)

        def weight_grad(inputs, grads):  # sum over bins and trials of inputs^T grads: one matmul
            return inputs.reshape(-1, inputs.shape[-1]).T @ grads.reshape(-1, grads.shape[-1])

        grads: list[torch.Tensor | None] = [None] * 21  # one per input of forward
        hidden = gs.shape[2]
        factor_inputs = torch.cat(
            [gen_init.unsqueeze(0), gs]
        )  # (T + 1, B, G): g_{-1} = g_init .. g_{T-1}
        if mg is not None:
            factor_inputs = factor_inputs * mg
        grads[2], grads[3], grads[4] = d_g_zr.transpose(0, 1), d_g_n.transpose(0, 1), d_gen_init
        grads[14] = weight_grad(g_prev, d_g_zr)
        grads[15] = weight_grad(g_gates[..., hidden:] * g_prev, d_g_n)
        grads[16] = weight_grad(factor_inputs, d_fs)
        if controller:
            fi = torch.cat([(factor_inputs[0] @ w_factor).unsqueeze(0), fs[:-1]])  # f_{t-1} per bin
            if mf is not None:
                fi = fi * mf
            con_hidden = cs.shape[2]
            grads[0], grads[1], grads[5] = d_c_zr.transpose(0, 1), d_c_n.transpose(0, 1), dc
            grads[6], grads[7] = weight_grad(fi, d_c_zr), weight_grad(fi, d_c_n)
            grads[8] = weight_grad(c_prev, d_c_zr)
            grads[9] = weight_grad(c_gates[..., con_hidden:] * c_prev, d_c_n)
            grads[10], grads[11] = weight_grad(cs, d_co), d_co.sum(dim=(0, 1))
            grads[12], grads[13] = weight_grad(us, d_g_zr), weight_grad(us, d_g_n)
        return tuple(grads)
