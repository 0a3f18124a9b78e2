"""Fast path for the stacked Elman (tanh) RNN: hand-written forward pass and BPTT, no autograd.

This is the "M2" algorithm of perf-notes (appendix) for one network. Autograd records ~8 nodes per
time step and layer and accumulates the recurrent weight gradient step by step; for these small
nets that per-op overhead, not arithmetic, sets the cost. Here each time step costs 2 ops per layer
forward (``addmm`` + ``tanh_``) and 2 backward (``addmm`` + ``mul_``), on preallocated time-major
buffers, and everything that does not need the recurrence (input projections, readout, softmax,
every weight gradient) runs as a few whole-sequence GEMMs. Same loss and gradient as
``model.ReferenceEngine`` to rounding (tested in float64).

Rows of whole-sequence matrices are time-major, row = t·B + b.
"""

import torch
from torch import Tensor

from bachglass.model import Batch, HeadLayout, param_specs, split_flat


class _Buffers:
    """Work arrays for one batch shape (T, B), allocated once and reused at every step."""

    def __init__(self, n_steps: int, n_batch: int, depth: int, width: int, like: Tensor) -> None:
        def new() -> Tensor:
            return like.new_empty(n_steps, n_batch, width)  # (T, B, w)

        self.h = [like.new_zeros(n_steps + 1, n_batch, width) for _ in range(depth)]  # h[l][0] = 0
        self.pre, self.dpre, self.dh, self.dtanh = new(), new(), new(), new()
        # Per-step views made once: indexing inside the time loop would cost a dispatch per step.
        pre, dpre, dh, dtanh = (a.unbind(0) for a in (self.pre, self.dpre, self.dh, self.dtanh))
        self.forward_steps = [
            list(zip(pre[1:], h.unbind(0)[1:-1], h.unbind(0)[2:], strict=True)) for h in self.h
        ]
        self.first = [(pre[0], h.unbind(0)[1]) for h in self.h]  # h_1 = tanh(pre_0) as h_0 = 0
        self.backward_steps = [(dh[t], dpre[t + 1], dpre[t], dtanh[t]) for t in range(n_steps - 2, -1, -1)]
        self.last = (dh[-1], dpre[-1], dtanh[-1])


class ElmanEngine:
    """Loss and gradient of the flat ``theta`` for the Elman cell, by manual BPTT.

    ``theta`` (N,) and ``grad`` (N,) are flat in ``model.param_specs`` order; the per-tensor views
    below alias them, so the trainer updates, clips and snapshots one vector.
    """

    def __init__(self, depth: int, width: int, layout: HeadLayout, theta: Tensor) -> None:
        specs = param_specs("rnn_tanh", depth, width, layout.vocab_sizes)
        self.depth, self.width, self.layout = depth, width, layout
        self.theta, self.grad = theta, torch.zeros_like(theta)
        params, grads = split_flat(theta, specs), split_flat(self.grad, specs)
        # per layer: weight_ih (w, in), weight_hh (w, w), bias_ih (w,), bias_hh (w,)
        self.layers = [params[4 * k : 4 * k + 4] for k in range(depth)]
        self.grad_layers = [grads[4 * k : 4 * k + 4] for k in range(depth)]
        self.w_out, self.b_out = params[-2:]  # (n_io, w), (n_io,)
        self.g_out = grads[-2:]
        self.bias = [theta.new_empty(width) for _ in range(depth)]  # bias_ih + bias_hh
        # Padded readout (4·n_max rows): pad rows are 0 and pad biases -inf, so one softmax over a
        # (n, 4, n_max) view covers all heads and a pad's probability (and gradient) is exactly 0.
        n_pad = len(layout.vocab_sizes) * layout.n_max
        self.columns = torch.as_tensor(layout.columns, device=theta.device)
        self.w_pad = theta.new_zeros(n_pad, width)
        self.b_pad = theta.new_full((n_pad,), float("-inf"))
        self.minus_one = theta.new_tensor(-1.0)
        self._buffers: dict[tuple[int, int], _Buffers] = {}

    def _buffers_for(self, batch: Batch) -> _Buffers:
        shape = tuple(batch.y.shape[:2])
        if shape not in self._buffers:
            self._buffers[shape] = _Buffers(*shape, self.depth, self.width, self.theta)
        return self._buffers[shape]

    def loss(self, batch: Batch) -> Tensor:
        """Mean cross-entropy of ``batch`` at ``theta`` (nats per note), shape ()."""
        buf = self._buffers_for(batch)
        return self._readout(batch, self._forward(batch, buf), buf, grad=False)

    def loss_grad(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Loss, shape (), and its gradient ``grad`` (N,); ``grad`` is overwritten by the next call."""
        buf = self._buffers_for(batch)
        loss = self._readout(batch, self._forward(batch, buf), buf, grad=True)
        self._backward(batch, buf)
        return loss, self.grad

    def _forward(self, batch: Batch, buf: _Buffers) -> Tensor:
        """Run all layers; return the top layer's states (T·B, w)."""
        n_rows = batch.y.shape[0] * batch.y.shape[1]
        below = batch.x.reshape(n_rows, -1)  # (T·B, n_io) one-hot inputs
        addmm = torch.addmm
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            bias = torch.add(b_ih, b_hh, out=self.bias[layer])
            addmm(bias, below, w_ih.t(), out=buf.pre.view(n_rows, -1))  # input part, all t at once
            pre0, h1 = buf.first[layer]
            torch.tanh(pre0, out=h1)
            w_hh_t = w_hh.t()
            for pre, h_prev, h_next in buf.forward_steps[layer]:  # h_{t+1} = tanh(pre_t + h_t W_hhᵀ)
                addmm(pre, h_prev, w_hh_t, out=h_next)
                h_next.tanh_()
            below = buf.h[layer][1:].view(n_rows, -1)  # (T·B, w)
        return below

    def _readout(self, batch: Batch, top: Tensor, buf: _Buffers, grad: bool) -> Tensor:
        """Loss from the top states; with ``grad``, readout gradients and dL/dh of the top layer."""
        n_voices, n_max = len(self.layout.vocab_sizes), self.layout.n_max
        h = top.index_select(0, batch.rows)  # (n, w) scored rows only
        self.w_pad.index_copy_(0, self.columns, self.w_out)
        self.b_pad.index_copy_(0, self.columns, self.b_out)
        z = torch.addmm(self.b_pad, h, self.w_pad.t())  # (n, 4·n_max)
        logp = torch.log_softmax(z.view(-1, n_voices, n_max), dim=2).view(z.shape)
        n_notes = batch.fidx.numel()
        loss = logp.view(-1).index_select(0, batch.fidx).sum().neg_().div_(n_notes)
        if not grad:
            return loss
        g = logp.exp_()  # softmax; dL/dz = (softmax - onehot) / n_notes
        g.view(-1).index_put_((batch.fidx,), self.minus_one, accumulate=True)
        g = g.index_select(1, self.columns).mul_(1.0 / n_notes)  # (n, n_io) compact layout
        g_w_out, g_b_out = self.g_out
        torch.mm(g.t(), h, out=g_w_out)
        torch.sum(g, 0, out=g_b_out)
        d_top = buf.dh.view(top.shape)  # (T·B, w), 0 on unscored rows
        d_top.zero_()
        d_top.index_copy_(0, batch.rows, g @ self.w_out)
        return loss

    def _backward(self, batch: Batch, buf: _Buffers) -> None:
        """BPTT from ``buf.dh`` (dL/dh of the top layer) down to the inputs, filling ``grad``."""
        n_rows = batch.y.shape[0] * batch.y.shape[1]
        addmm = torch.addmm
        for layer in reversed(range(self.depth)):
            w_ih, w_hh, _, _ = self.layers[layer]
            g_w_ih, g_w_hh, g_b_ih, g_b_hh = self.grad_layers[layer]
            h = buf.h[layer]  # (T+1, B, w)
            torch.mul(h[1:], h[1:], out=buf.dtanh).neg_().add_(1)  # tanh' = 1 - h²
            dh, dpre, dtanh = buf.last
            torch.mul(dh, dtanh, out=dpre)
            for dh, dpre_next, dpre, dtanh in buf.backward_steps:  # δ_t = (dh_t + δ_{t+1} W_hh) ⊙ tanh'
                addmm(dh, dpre_next, w_hh, out=dpre)
                dpre.mul_(dtanh)
            delta = buf.dpre.view(n_rows, -1)  # (T·B, w)
            torch.mm(delta.t(), h[:-1].view(n_rows, -1), out=g_w_hh)
            torch.sum(delta, 0, out=g_b_ih)
            g_b_hh.copy_(g_b_ih)  # both biases enter as their sum
            below = batch.x.reshape(n_rows, -1) if layer == 0 else buf.h[layer - 1][1:].view(n_rows, -1)
            torch.mm(delta.t(), below, out=g_w_ih)
            if layer > 0:
                torch.mm(delta, w_ih, out=buf.dh.view(n_rows, -1))  # dL/dh of the layer below
