"""Many Elman (tanh) networks of one (depth, width) as one batched model: stacked weights, manual BPTT.

This is the "M2" algorithm of docs/science.md Conventions, stacked over S members that share nothing but
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

HEAD_BYTES = 4 << 20  # logits per readout chunk on CPU: about L2-L3 sized; on a GPU all members at once


class StackedBatch(NamedTuple):
    """The inputs and targets of one step for all members: one shared batch, or one per member.

    The leading member axis M is S (a batch per member) or 1 (shared, broadcast over members).
    Rows are chorale-major, row = b·T + t, so that cutting a batch out of the corpus is a gather.
    """

    x: Tensor | None  # (1, B·T, n_io) one-hot inputs of a shared batch (0 on padding); None per member
    inputs: Tensor  # (M, B·T, 4) int64 the 4 hot input columns; n_io (a zero row) on padding
    slots: Tensor  # (M, B·T, 4) int64 target slot in the padded (4·n_max) head layout
    weight: Tensor  # (M, B·T) 1/(number of scored notes) on scored rows, 0 elsewhere
    n_batch: int
    n_steps: int

    @property
    def shared(self) -> bool:
        """Whether every member sees the same batch."""
        return self.slots.shape[0] == 1


class Corpus:
    """Chorales as per-chorale tensors, from which the stacked batches of a step are cut."""

    def __init__(self, batch: Batch, layout: HeadLayout) -> None:
        n_voices, n_io = batch.y.shape[2], layout.n_io
        self.n_chorales = batch.y.shape[1]
        self.x = batch.x.transpose(0, 1).contiguous()  # (C, T, n_io)
        hot = []  # each voice's hot input column, or n_io on padding
        for offset, size in zip(layout.offsets.tolist(), layout.vocab_sizes, strict=True):
            block = self.x[..., offset : offset + size]
            hot.append(torch.where(block.sum(dim=2) > 0, block.argmax(dim=2) + offset, n_io))
        self.inputs = torch.stack(hot, dim=2)  # (C, T, 4)
        offsets = torch.arange(n_voices, device=batch.y.device) * layout.n_max
        # unscored rows get a harmless slot (token 0) and weight 0
        self.slots = (batch.y.clamp(min=0) + offsets).transpose(0, 1).contiguous()  # (C, T, 4)
        self.scored = (batch.y[..., 0] >= 0).transpose(0, 1).contiguous()  # (C, T)
        self.all = torch.arange(self.n_chorales, device=batch.y.device).unsqueeze(0)

    def select(self, idx: Tensor) -> StackedBatch:
        """Cut the batch of chorales ``idx`` (M, B): row m is member m's batch (M = 1: shared)."""
        n_sets, n_batch = idx.shape
        n_steps, flat = self.x.shape[1], idx.reshape(-1)
        rows = (n_sets, n_batch * n_steps)
        x = self.x.index_select(0, flat).view(*rows, -1) if n_sets == 1 else None
        inputs = self.inputs.index_select(0, flat).view(*rows, -1)
        slots = self.slots.index_select(0, flat).view(*rows, -1)
        scored = self.scored.index_select(0, flat).view(rows).to(self.x.dtype)
        weight = scored / (scored.sum(dim=1, keepdim=True) * slots.shape[2])  # 1 / scored notes
        return StackedBatch(x, inputs, slots, weight, n_batch, n_steps)


class _Buffers:
    """Work arrays for one batch shape (B, T), allocated once and reused at every step.

    ``s[l]`` (T+1, S, B, w) holds layer l's σ states, s_0 = ½; the pre-activations are written
    into s_1..s_T first and turned into states in place, step by step. ``dh`` (T, S, B, w) holds
    dL/dh of the current layer, turned into δ = dL/d(pre-activation) in place, step by step.
    """

    def __init__(
        self,
        n_batch: int,
        n_steps: int,
        depth: int,
        n_members: int,
        width: int,
        n_pad: int,
        like: Tensor,
        head_bytes: int | None,
    ) -> None:
        self.s = [like.new_full((n_steps + 1, n_members, n_batch, width), 0.5) for _ in range(depth)]
        self.dh, self.dtanh = (like.new_empty(n_steps, n_members, n_batch, width) for _ in range(2))
        rows = (n_members, n_batch * n_steps)
        self.u = [like.new_empty(*rows, width) for _ in range(depth)]  # each layer's h_1..h_T, member-major
        self.ds, self.hprev = like.new_empty(*rows, width), like.new_empty(*rows, width)  # δ, h_0..h_{T-1}
        chunk = (
            n_members if head_bytes is None else max(1, head_bytes // (rows[1] * n_pad * like.element_size()))
        )
        self.z = like.new_empty(min(chunk, n_members), rows[1], n_pad)  # logits, log-softmax, dL/dz
        self.hot = like.new_empty(0, dtype=torch.int64)  # layer 0's gathered table rows (per-member batches)
        # Per-step views made once: indexing inside the time loop would cost a dispatch per step.
        dh, dtanh = self.dh.unbind(0), self.dtanh.unbind(0)
        self.forward_steps = [list(zip(s.unbind(0)[:-1], s.unbind(0)[1:], strict=True)) for s in self.s]
        self.backward_steps = [(dh[t], dh[t + 1], dtanh[t]) for t in range(n_steps - 2, -1, -1)]
        self.last = (dh[-1], dtanh[-1])


class BatchedElman:
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
        n_io = layout.n_io
        self.w_in = theta.new_empty(n_members * width, n_io)  # layer-0 W_ih of all members, (S·w, I)
        # per-member batches: layer 0's input part is a sum of 4 rows of W_ihᵀ (the hot columns), so
        # gather them from a table of every member's W_ihᵀ plus a zero row (padding), not a GEMM with
        # the one-hots; the gradient is the matching scatter-add
        self.table = theta.new_zeros(n_members, n_io + 1, width)
        self.g_table = theta.new_zeros(n_members, n_io + 1, width)
        self.table_base = torch.arange(n_members, device=theta.device).view(-1, 1, 1) * (n_io + 1)
        # the readout and softmax go member by member in chunks that stay in cache (CPU)
        self.head_bytes = HEAD_BYTES if theta.device.type == "cpu" else None
        self.minus_one = theta.new_tensor(-1.0)
        self._buffers: dict[tuple[int, int], _Buffers] = {}

    def _buffers_for(self, batch: StackedBatch) -> _Buffers:
        key = (batch.n_batch, batch.n_steps)
        if key not in self._buffers:
            args = (self.depth, self.n_members, self.width, self.n_pad, self.theta, self.head_bytes)
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
            elif layer == 0:
                self.table[:, :-1].copy_(w_ih.transpose(1, 2))
                buf.hot = (batch.inputs + self.table_base).view(-1, batch.inputs.shape[2])
                proj = torch.nn.functional.embedding_bag(buf.hot, self.table.view(-1, width), mode="sum")
                proj = self._time_major(proj.view(n_members, -1, width), batch)
            else:
                proj = self._time_major(torch.bmm(buf.u[layer - 1], w_ih.transpose(1, 2)), batch)
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
        self.w_pad.index_copy_(1, self.columns, self.w_out)
        self.b_pad.squeeze(1).index_copy_(1, self.columns, self.b_out)
        loss = self.theta.new_empty(self.n_members)
        chunk = buf.z.shape[0]
        for start in range(0, self.n_members, chunk):
            members = slice(start, min(start + chunk, self.n_members))
            loss[members] = self._readout_chunk(batch, buf, members, grad)
        return loss

    def _readout_chunk(self, batch: StackedBatch, buf: _Buffers, members: slice, grad: bool) -> Tensor:
        """:meth:`_readout` for the members ``members``."""
        n_voices, n_max = len(self.layout.vocab_sizes), self.layout.n_max
        size = members.stop - members.start
        top, w_pad = buf.u[-1][members], self.w_pad[members]
        z = torch.baddbmm(self.b_pad[members], top, w_pad.transpose(1, 2), out=buf.z[:size])  # (k, B·T, P)
        heads = z.view(*z.shape[:2], n_voices, n_max)
        torch.log_softmax(heads, dim=3, out=heads)  # (a softmax over groups of n_max is slower here)
        own = slice(0, 1) if batch.shared else members
        slots, weight = batch.slots[own].expand(size, -1, -1), batch.weight[own]
        picked = z.gather(2, slots).sum(dim=2)  # (k, B·T) Σ_voices log p(target)
        loss = (picked * weight).sum(dim=1).neg_()
        if not grad:
            return loss
        # dL/dz = (softmax - onehot)·weight per row; the row weights go on the thin (B·T, w) side of
        # each GEMM instead of over the (B·T, P) probabilities
        g = z.exp_().scatter_add_(2, slots, self.minus_one.expand(slots.shape))
        g_w_out, g_b_out = (g[members] for g in self.g_out)
        weighted_top = top * weight.unsqueeze(2)  # (k, B·T, w)
        g_w_out.copy_(
            torch.bmm(weighted_top.transpose(1, 2), g).index_select(2, self.columns).transpose(1, 2)
        )
        g_b_out.copy_(
            torch.bmm(weight.expand(size, -1).unsqueeze(1), g).squeeze(1).index_select(1, self.columns)
        )
        d_top = (
            torch.bmm(g, w_pad).mul_(weight.unsqueeze(2)).view(size, batch.n_batch, batch.n_steps, self.width)
        )
        buf.dh[:, members].copy_(d_top.permute(2, 0, 1, 3))  # dL/dh of the top layer
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
            elif layer == 0:  # scatter-add δ into the rows that layer 0 gathered
                table = self.g_table.view(-1, width)
                table.zero_()
                for voice in range(buf.hot.shape[1]):
                    table.index_add_(0, buf.hot[:, voice], ds.view(-1, width))
                g_w_ih.copy_(self.g_table[:, :-1].transpose(1, 2))
            else:
                g_w_ih.copy_(torch.bmm(ds.transpose(1, 2), buf.u[layer - 1]))
            if layer > 0:  # dL/dh of the layer below
                buf.dh.copy_(self._time_major(torch.bmm(ds, w_ih), batch))


def _stacked_views(flat: Tensor, specs: list) -> list[Tensor]:
    """Split ``flat`` (S, N) into per-tensor views (S, *shape); writing a view writes ``flat``."""
    views = torch.split(flat, [s.size for s in specs], dim=1)
    return [v.view(flat.shape[0], *s.shape) for v, s in zip(views, specs, strict=True)]
