"""The device a job computes on: chosen once, refused loudly when unusable, logged and recorded.

``cpu`` and ``cuda`` are taken as said; ``cuda`` never falls back to the CPU. ``auto`` takes CUDA when
torch can use it, and the CPU otherwise, except in a job that SLURM gave GPUs: there a CPU fallback
would be a GPU job silently training on the CPU, so it stops with one line saying why CUDA is not
usable (a CPU build of torch, or no GPU visible to it).

The outputs record the device type, the GPU's name and the CUDA version torch was built for
(:func:`attrs`); the log line of :func:`announce` adds the CPU model, its kernels and threads, which
stay out of the files so that CPU machines with the same lock write the same bytes.
"""

import functools
import logging
import os
import platform
from pathlib import Path

import torch

from bachglass.errors import ParamsError

log = logging.getLogger(__name__)

NAMES = ("auto", "cpu", "cuda")
# set in a SLURM job that has GPUs: the first two list their indices ("0" is GPU 0), the last counts them
SLURM_GPU_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")


def resolve(name: str, key: str) -> torch.device:
    """Return the device that the parameter ``key`` (value ``name``) asks for, or stop saying why not."""
    if name not in NAMES:
        raise ParamsError(f"{key}: {name!r} is not one of {', '.join(NAMES)}")
    usable = torch.cuda.is_available()
    if name == "cuda" and not usable:
        raise ParamsError(f"{key}: 'cuda' but {why_no_cuda()}; set {key}: cpu to compute on the CPU")
    granted = [var for var in SLURM_GPU_VARIABLES if slurm_gpus(var)]
    if name == "auto" and granted and not usable:
        raise ParamsError(
            f"{key}: 'auto' in a SLURM job with GPUs ({granted[0]}={os.environ[granted[0]]}) but "
            f"{why_no_cuda()}; set {key}: cpu to train on the CPU, or run on a CPU partition"
        )
    if name == "auto":
        name = "cuda" if usable else "cpu"
    return torch.device(name)


def slurm_gpus(variable: str) -> bool:
    """Whether the SLURM variable says this job has GPUs: any index list, or a count above 0."""
    value = os.environ.get(variable, "").strip()
    return value not in ("", "0") if variable == "SLURM_GPUS_ON_NODE" else value != ""


def why_no_cuda() -> str:
    """Why torch cannot use CUDA here, as a clause."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (on a GPU node: make venv LOCK=envs/cuda.txt)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU "
        f"(CUDA_VISIBLE_DEVICES={visible!r}; no GPU, or a driver too old for CUDA {torch.version.cuda})"
    )


def attrs(device: torch.device) -> dict[str, str]:
    """Return what an output records of the device it was computed on."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": device.type, "device_name": name, "cuda_version": torch.version.cuda or "none"}


def describe(device: torch.device) -> str:
    """One line: the device, its name, torch and CUDA versions (and, on the CPU, its kernels and threads)."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        major, minor = torch.cuda.get_device_capability(index)
        return (
            f"device cuda:{index} ({torch.cuda.get_device_name(index)}, compute capability {major}.{minor}), "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    return (
        f"device cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()} kernels, "
        f"{torch.get_num_threads()} threads), torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"
    )


@functools.cache
def announce(device: torch.device) -> None:
    """Log :func:`describe` once per process and device (a job's first line about where it computes)."""
    log.info("%s", describe(device))


def cpu_model() -> str:
    """Return the CPU's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
