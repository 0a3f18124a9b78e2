"""The update rule: plain SGD at constant lr, an optional clip, Langevin noise; S runs at once.

Plain SGD at constant lr (no momentum, no weight decay): a schedule would add its own time scale to
the glassy dynamics under study. The one deviation is an optional per-net global gradient-norm
clip, whose activity is recorded as ``clip_fraction``; the largest gradient norm between two
records is logged whether or not a clip is set (``grad_norm_max``).

At ``temperature`` T > 0 the dynamics is Langevin (Kerr Winter & Janssen): every step adds
sqrt(2 T η / P)·ξ, ξ ~ N(0, I), where P is the number of scored notes of the training set, so that
exp(-P L / T) is stationary and T is in nats per note (see :meth:`SGD.add_noise`). Each run draws
its noise from a generator of its own, seeded from its seed.

What the rule carries from step to step for a run (its counters and its noise generator) is that
run's state dict (:meth:`SGD.state_dict`), which a checkpoint saves as one entry: a rule with more
state (momentum, say) adds it there and nothing else changes. :class:`bachglass.pack_state.PackState`
holds the rest of the runs' state and calls :meth:`SGD.step`.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bachglass import device as devices
from bachglass import model
from bachglass.errors import DataError, ParamsError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
NOISE_TAG = 0x4C414E47  # "LANG": a run's Langevin stream is seeded (seed, tag), apart from init and batches


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml, key for key (see the comments there)."""

    cell: str
    lr: float
    batch_size: int | None
    steps: int
    clip_norm: float | None
    checkpoints_per_decade: int
    resume_every: int
    dtype: str
    device: str
    temperature: float  # Langevin T, nats per note; 0: plain (S)GD, no random numbers drawn
    init: str  # model.INITS: the recurrent weights' initialisation

    @classmethod
    def plain(cls, **keys: Any) -> "TrainConfig":
        """Return plain SGD (no Langevin noise, the default initialisation) with ``keys`` for the rest."""
        return cls(**{"temperature": 0.0, "init": "pytorch"} | keys)


def resolve(config: TrainConfig) -> tuple[torch.device, torch.dtype]:
    """Device (:func:`bachglass.device.resolve`) and dtype of a run."""
    if config.init not in model.INITS:
        raise ParamsError(f"train.init: {config.init!r} is not one of {', '.join(model.INITS)}")
    if config.cell not in model.CELLS or config.dtype not in DTYPES:
        raise ParamsError(
            f"train: cell {config.cell!r} or dtype {config.dtype!r} unknown; "
            f"use one of {list(model.CELLS)} and {list(DTYPES)}"
        )
    return devices.resolve(config.device, "train.device"), DTYPES[config.dtype]


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    """Return run ``seed``'s Langevin noise generator on ``device``: its own stream, whatever its pack.

    Seeded from (seed, :data:`NOISE_TAG`), not from the seed alone, which already seeds the init
    (a torch generator too) and the batch order. On CUDA it is a device (Philox) generator: drawing
    on the host would need a host-to-device copy, and so a wait for the GPU, at every step.
    """
    key = int(np.random.SeedSequence([seed, NOISE_TAG]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(key)


class SGD:
    """θ ← θ − lr·g per run (g clipped to ``clip_norm`` when longer), then Langevin noise at T > 0.

    ``clipped`` and ``grad_max`` count, per run, the clipped steps and the largest gradient norm
    since the last record (:meth:`reset_counters`).
    """

    def __init__(
        self, config: TrainConfig, theta: torch.Tensor, seeds: list[int], n_scored_notes: int
    ) -> None:
        self.lr, self.clip_norm, self.temperature = config.lr, config.clip_norm, config.temperature
        self.clipped = theta.new_zeros(len(seeds))  # clipped steps since the last record, per run
        self.grad_max = theta.new_zeros(len(seeds))  # largest gradient norm since the last record, per run
        self.noise_scale, self.noise = 0.0, None  # Langevin: θ += noise_scale·ξ after each step
        self.generators: list[torch.Generator | None] = [None] * len(seeds)
        if config.temperature > 0:
            if n_scored_notes == 0:
                raise DataError("encoded.nc: no scored note in the training chorales; re-create it")
            self.noise_scale = math.sqrt(2 * config.temperature * config.lr / n_scored_notes)
            self.noise = torch.empty_like(theta)  # (S, N) this step's ξ
            self.generators = [noise_generator(seed, theta.device) for seed in seeds]

    def step(self, theta: torch.Tensor, grad: torch.Tensor, active: torch.Tensor, n_stopped: int) -> None:
        """Update ``theta`` (S, N) in place from ``grad`` (S, N); runs with ``active`` 0 stay as they are.

        With minibatches the same noise is added to the minibatch gradient step (stochastic-gradient
        Langevin, Welling & Teh 2011): P stays the training set's, whose mean loss the minibatch
        gradient estimates, and the minibatch noise comes on top (the stationary state is then only
        approximately exp(-P L / T)).
        """
        clip = self.clip_norm
        norm = torch.linalg.vector_norm(grad, dim=1)
        torch.fmax(self.grad_max, norm, out=self.grad_max)  # logged whether or not a clip acts
        if clip is not None:
            self.clipped.add_(norm > clip)
            grad.mul_((clip / norm).clamp_(max=1.0).unsqueeze(1))
        if n_stopped:  # NaN·0 is NaN: a diverged run's gradient is dropped, not scaled
            grad.masked_fill_(active.unsqueeze(1) == 0, 0.0)
        theta.add_(grad, alpha=-self.lr)
        self.add_noise(theta, active, n_stopped)

    def add_noise(self, theta: torch.Tensor, active: torch.Tensor, n_stopped: int) -> None:
        """θ ← θ + sqrt(2 T lr / P)·ξ per run, ξ ~ N(0, I) from the run's own generator (T > 0 only).

        The stationary density of this Langevin step is exp(-P L / T), L the mean loss per note and
        P the number of scored training notes, so T is in nats per note. Row m of ξ comes from run
        m's generator alone, so a run's noise does not depend on its pack; a diverged run's θ stays 0.
        At T = 0 nothing is drawn, so plain (S)GD is bitwise what it was without this step.
        """
        noise = self.noise
        if noise is None:
            return
        for row, generator in zip(noise, self.generators, strict=True):
            row.normal_(generator=generator)  # (N,) on θ's device
        if n_stopped:
            noise.mul_(active.unsqueeze(1))
        theta.add_(noise, alpha=self.noise_scale)

    def reset_counters(self) -> None:
        """Start counting clipped steps and the largest gradient norm anew (at a record)."""
        self.clipped.zero_()
        self.grad_max.zero_()

    def state_dict(self, m: int) -> dict[str, Any]:
        """Run ``m``'s state of the rule, as plain types and CPU tensors (loadable with weights_only)."""
        generator = self.generators[m]
        return {
            "clipped": int(self.clipped[m].item()),
            "grad_max": float(self.grad_max[m].item()),
            "noise": None if generator is None else generator.get_state(),  # uint8, on the CPU
        }

    def load_state_dict(self, m: int, state: dict[str, Any]) -> None:
        """Continue run ``m`` from its :meth:`state_dict`."""
        self.clipped[m], self.grad_max[m] = state["clipped"], state["grad_max"]
        generator = self.generators[m]
        if generator is not None:  # the identity holds the temperature: None only at T = 0
            generator.set_state(state["noise"])
