"""Many Elman (tanh) networks of one (depth, width) as one batched model: stacked weights, manual BPTT.

This is the "M2" algorithm of perf-notes (appendix), stacked over S members that share nothing but
their shape: each has its own parameters (row s of ``theta``, shape (S, N)), its own batch when the
caller gives one per member, and its own gradient (row s of ``grad``). Per time step and layer it
runs 2 ops forward and 2 backward for all S members at once; everything without a recurrence (input
projections, readout, softmax, every weight gradient) runs as a few whole-sequence batched GEMMs.
Autograd is not used: it records ~8 nodes per step and layer, and for nets this small that per-op
overhead, not arithmetic, sets the cost.

Two identities make the time loop cheaper without changing the function computed:

* tanh(a) = 2σ(2a) − 1, and σ costs a tenth of tanh on CPU (vectorised there, tanh is not). The loop
  carries s_t = σ(2a_t) instead of h_t = 2s_t − 1, so h_{t-1} W_hhᵀ = 2 s_{t-1} W_hhᵀ − 1 W_hhᵀ, and
  the constant is folded into the precomputed input part: one ``baddbmm`` (α = 4) and one
  ``sigmoid_`` per step. h_0 = 0 is s_0 = ½.
* The 4 per-voice softmaxes are one softmax over a padded (4, n_max) layout; pad logits are −inf so
  their probability, and gradient, are exactly 0.

Buffers touched inside the time loop are time-major, (T, S, B, w), so each step's slice is one
contiguous batch of S matrices; whole-sequence GEMMs use member-major copies, (S, T·B, w).
Results equal ``model.ReferenceEngine`` (nn.RNN + autograd) to rounding, member by member (tested in
float64); in float32 the difference is round-off, which chaotic SGD amplifies over long runs.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from bachglass.model import Batch, HeadLayout, param_specs


class StackedBatch(NamedTuple):
    """The inputs and targets of one step for all members: one shared batch, or one per member.

    The leading member axis M is S (a batch per member) or 1 (shared, broadcast over members).
    Rows are chorale-major, row = b·T + t, so that cutting a batch out of the corpus is a gather.
    """

    x: Tensor  # (M, B·T, n_io) one-hot inputs; 0 on padding
    slots: Tensor  # (M, B·T, 4) int64 target slot in the padded (4·n_max) head layout
    weight: Tensor  # (M, B·T) 1/(number of scored notes) on scored rows, 0 elsewhere
    n_batch: int
    n_steps: int

    @property
    def shared(self) -> bool:
        """Whether every member sees the same batch."""
        return self.x.shape[0] == 1


class Corpus:
    """Chorales as per-chorale tensors, from which the stacked batches of a step are cut."""

    def __init__(self, batch: Batch, layout: HeadLayout) -> None:
        n_voices = batch.y.shape[2]
        self.n_chorales = batch.y.shape[1]
        self.x = batch.x.transpose(0, 1).contiguous()  # (C, T, n_io)
        offsets = torch.arange(n_voices, device=batch.y.device) * layout.n_max
        # unscored rows get a harmless slot (token 0) and weight 0
        self.slots = (batch.y.clamp(min=0) + offsets).transpose(0, 1).contiguous()  # (C, T, 4)
        self.scored = (batch.y[..., 0] >= 0).transpose(0, 1).contiguous()  # (C, T)
        self.all = torch.arange(self.n_chorales, device=batch.y.device).unsqueeze(0)

    def select(self, idx: Tensor) -> StackedBatch:
        """Cut the batch of chorales ``idx`` (M, B): row m is member m's batch (M = 1: shared)."""
        n_sets, n_batch = idx.shape
        n_steps, flat = self.x.shape[1], idx.reshape(-1)
        x = self.x.index_select(0, flat).view(n_sets, n_batch * n_steps, -1)
        slots = self.slots.index_select(0, flat).view(n_sets, n_batch * n_steps, -1)
        scored = self.scored.index_select(0, flat).view(n_sets, n_batch * n_steps).to(x.dtype)
        weight = scored / (scored.sum(dim=1, keepdim=True) * slots.shape[2])  # 1 / scored notes
        return StackedBatch(x, slots, weight, n_batch, n_steps)


class _Buffers:
    """Work arrays for one batch shape (B, T), allocated once and reused at every step.

    ``s[l]`` (T+1, S, B, w) holds layer l's σ states, s_0 = ½; the pre-activations are written
    into s_1..s_T first and turned into states in place, step by step. ``dh`` (T, S, B, w) holds
    dL/dh of the current layer, turned into δ = dL/d(pre-activation) in place, step by step.
    """

    def __init__(
        self, n_batch: int, n_steps: int, depth: int, n_members: int, width: int, n_pad: int, like: Tensor
    ) -> None:
        self.s = [like.new_full((n_steps + 1, n_members, n_batch, width), 0.5) for _ in range(depth)]
        self.dh, self.dtanh = (like.new_empty(n_steps, n_members, n_batch, width) for _ in range(2))
        rows = (n_members, n_batch * n_steps)
        self.u = [like.new_empty(*rows, width) for _ in range(depth)]  # each layer's h_1..h_T, member-major
        self.ds, self.hprev = like.new_empty(*rows, width), like.new_empty(*rows, width)  # δ, h_0..h_{T-1}
        self.z = like.new_empty(*rows, n_pad)  # logits, then log-softmax, then dL/dz
        # Per-step views made once: indexing inside the time loop would cost a dispatch per step.
        dh, dtanh = self.dh.unbind(0), self.dtanh.unbind(0)
        self.forward_steps = [list(zip(s.unbind(0)[:-1], s.unbind(0)[1:], strict=True)) for s in self.s]
        self.backward_steps = [(dh[t], dh[t + 1], dtanh[t]) for t in range(n_steps - 2, -1, -1)]
        self.last = (dh[-1], dtanh[-1])


class EnsembleEngine:
    """Loss and gradient of S Elman networks at once, by manual BPTT.

    ``theta`` (S, N) and ``grad`` (S, N) hold one member per row, flat in ``model.param_specs``
    order; the stacked per-tensor views below alias them, so the trainer updates, clips and
    snapshots plain rows.
    """

    def __init__(self, depth: int, width: int, layout: HeadLayout, theta: Tensor) -> None:
        specs = param_specs("rnn_tanh", depth, width, layout.vocab_sizes)
        self.depth, self.width, self.layout = depth, width, layout
        self.n_members = theta.shape[0]
        self.theta, self.grad = theta, torch.zeros_like(theta)
        params, grads = _stacked_views(theta, specs), _stacked_views(self.grad, specs)
        # per layer: weight_ih (S, w, in), weight_hh (S, w, w), bias_ih (S, w), bias_hh (S, w)
        self.layers = [params[4 * k : 4 * k + 4] for k in range(depth)]
        self.grad_layers = [grads[4 * k : 4 * k + 4] for k in range(depth)]
        self.w_out, self.b_out = params[-2:]  # (S, n_io, w), (S, n_io)
        self.g_out = grads[-2:]
        n_members, n_voices = self.n_members, len(layout.vocab_sizes)
        self.n_pad = n_voices * layout.n_max
        self.columns = torch.as_tensor(layout.columns, device=theta.device)
        self.w_pad = theta.new_zeros(n_members, self.n_pad, width)  # pad rows stay 0
        self.b_pad = theta.new_full((n_members, 1, self.n_pad), float("-inf"))
        self.const = [theta.new_empty(n_members, 1, width) for _ in range(depth)]  # see _forward
        self.w_in = theta.new_empty(n_members * width, sum(layout.vocab_sizes))  # layer-0 W_ih, (S·w, I)
        self.minus_one = theta.new_tensor(-1.0)
        self._buffers: dict[tuple[int, int], _Buffers] = {}

    def _buffers_for(self, batch: StackedBatch) -> _Buffers:
        key = (batch.n_batch, batch.n_steps)
        if key not in self._buffers:
            args = (self.depth, self.n_members, self.width, self.n_pad, self.theta)
            self._buffers[key] = _Buffers(*key, *args)
        return self._buffers[key]

    def loss(self, batch: StackedBatch) -> Tensor:
        """Mean cross-entropy of each member on ``batch`` (nats per note), shape (S,)."""
        buf = self._buffers_for(batch)
        self._forward(batch, buf)
        return self._readout(batch, buf, grad=False)

    def loss_grad(self, batch: StackedBatch) -> tuple[Tensor, Tensor]:
        """Losses (S,) and gradients ``grad`` (S, N); ``grad`` is overwritten by the next call."""
        buf = self._buffers_for(batch)
        self._forward(batch, buf)
        loss = self._readout(batch, buf, grad=True)
        self._backward(batch, buf)
        return loss, self.grad

    def _time_major(self, rows: Tensor, batch: StackedBatch) -> Tensor:
        """View member-major rows (S, B·T, w) as (T, S, B, w) (a view, not a copy)."""
        return rows.view(self.n_members, batch.n_batch, batch.n_steps, self.width).permute(2, 0, 1, 3)

    def _member_major(self, rows: Tensor, batch: StackedBatch) -> Tensor:
        """View member-major rows (S, B·T, w) as (S, B, T, w), to be written from time-major data."""
        return rows.view(self.n_members, batch.n_batch, batch.n_steps, self.width)

    def _forward(self, batch: StackedBatch, buf: _Buffers) -> None:
        """Run all layers; leave the σ states in ``buf.s`` and each layer's h rows in ``buf.u``."""
        n_members, width = self.n_members, self.width
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            # pre_t = 2(x_t W_ihᵀ + b) - 2·1 W_hhᵀ: the σ form's input part plus the constant of h = 2s - 1
            const = self.const[layer]
            torch.add(b_ih, b_hh, out=const.squeeze(1)).sub_(w_hh.sum(dim=2)).mul_(2)
            if layer == 0 and batch.shared:  # one GEMM for all members: (B·T, I) @ (I, S·w)
                self.w_in.view(n_members, width, -1).copy_(w_ih)
                proj = batch.x[0] @ self.w_in.t()  # (B·T, S·w)
                proj = proj.view(batch.n_batch, batch.n_steps, n_members, width).permute(1, 2, 0, 3)
            else:
                below = batch.x if layer == 0 else buf.u[layer - 1]
                proj = self._time_major(torch.bmm(below, w_ih.transpose(1, 2)), batch)
            s = buf.s[layer]
            torch.add(const, proj, alpha=2, out=s[1:])
            w_hh_t = w_hh.transpose(1, 2)
            for s_prev, s_next in buf.forward_steps[layer]:  # s_{t+1} = σ(pre_t + 4 s_t W_hhᵀ)
                s_next.baddbmm_(s_prev, w_hh_t, alpha=4).sigmoid_()
            # h = 2s - 1 as member-major rows: the next layer's input, or the readout's
            torch.add(
                self.minus_one,
                s[1:].permute(1, 2, 0, 3),
                alpha=2,
                out=self._member_major(buf.u[layer], batch),
            )

    def _readout(self, batch: StackedBatch, buf: _Buffers, grad: bool) -> Tensor:
        """Losses from the top states; with ``grad``, readout gradients and dL/dh of the top layer."""
        n_voices, n_max = len(self.layout.vocab_sizes), self.layout.n_max
        self.w_pad.index_copy_(1, self.columns, self.w_out)
        self.b_pad.squeeze(1).index_copy_(1, self.columns, self.b_out)
        top = buf.u[-1]
        z = torch.baddbmm(self.b_pad, top, self.w_pad.transpose(1, 2), out=buf.z)  # (S, B·T, P)
        heads = z.view(*z.shape[:2], n_voices, n_max)
        torch.log_softmax(heads, dim=3, out=heads)
        slots = batch.slots.expand(self.n_members, -1, -1)
        picked = z.gather(2, slots).sum(dim=2)  # (S, B·T) Σ_voices log p(target)
        loss = (picked * batch.weight).sum(dim=1).neg_()
        if not grad:
            return loss
        g = z.exp_()  # softmax; dL/dz = (softmax - onehot) · weight
        g.scatter_add_(2, slots, self.minus_one.expand(slots.shape))
        g.mul_(batch.weight.unsqueeze(2))
        g_w_out, g_b_out = self.g_out
        g_w_out.copy_(torch.bmm(top.transpose(1, 2), g).index_select(2, self.columns).transpose(1, 2))
        g_b_out.copy_(g.sum(dim=1).index_select(1, self.columns))
        buf.dh.copy_(self._time_major(torch.bmm(g, self.w_pad), batch))  # dL/dh of the top layer
        return loss

    def _backward(self, batch: StackedBatch, buf: _Buffers) -> None:
        """BPTT from ``buf.dh`` (dL/dh of the top layer) down to the inputs, filling ``grad``."""
        n_members, width = self.n_members, self.width
        for layer in reversed(range(self.depth)):
            w_ih, w_hh, _, _ = self.layers[layer]
            g_w_ih, g_w_hh, g_b_ih, g_b_hh = self.grad_layers[layer]
            s = buf.s[layer]  # (T+1, S, B, w)
            torch.addcmul(s[1:], s[1:], s[1:], value=-1, out=buf.dtanh).mul_(4)  # tanh' = 1 - h² = 4s(1 - s)
            delta, dtanh = buf.last
            delta.mul_(dtanh)
            for delta, delta_next, dtanh in buf.backward_steps:  # δ_t = (dh_t + δ_{t+1} W_hh) ⊙ tanh'
                delta.baddbmm_(delta_next, w_hh).mul_(dtanh)
            ds = buf.ds  # (S, B·T, w)
            self._member_major(ds, batch).copy_(buf.dh.permute(1, 2, 0, 3))
            # the input to step t is h_t = 2 s_t - 1 (h_0 = 0)
            hprev = self._member_major(buf.hprev, batch)
            torch.add(self.minus_one, s[:-1].permute(1, 2, 0, 3), alpha=2, out=hprev)
            g_w_hh.copy_(torch.bmm(ds.transpose(1, 2), buf.hprev))
            g_b_ih.copy_(ds.sum(dim=1))
            g_b_hh.copy_(g_b_ih)  # both biases enter as their sum
            if layer == 0 and batch.shared:  # (I, B·T) @ (B·T, S·w), one GEMM for all members
                d_rows = buf.dh.permute(2, 0, 1, 3).reshape(batch.n_batch * batch.n_steps, n_members * width)
                g_w_ih.copy_((batch.x[0].t() @ d_rows).view(-1, n_members, width).permute(1, 2, 0))
            else:
                below = batch.x if layer == 0 else buf.u[layer - 1]
                g_w_ih.copy_(torch.bmm(ds.transpose(1, 2), below))
            if layer > 0:  # dL/dh of the layer below
                buf.dh.copy_(self._time_major(torch.bmm(ds, w_ih), batch))


def _stacked_views(flat: Tensor, specs: list) -> list[Tensor]:
    """Split ``flat`` (S, N) into per-tensor views (S, *shape); writing a view writes ``flat``."""
    views = torch.split(flat, [s.size for s in specs], dim=1)
    return [v.view(flat.shape[0], *s.shape) for v, s in zip(views, specs, strict=True)]
