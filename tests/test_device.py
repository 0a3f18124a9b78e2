"""Device honesty: `cuda` and a SLURM GPU job never fall back to the CPU; every job says where it computes."""

import dataclasses
import logging

import pytest
import torch
from conftest import make_encoded, train_config

from bachglass import device, probes, train
from bachglass.errors import ParamsError

torch.set_num_threads(1)
PROBES = probes.ProbesConfig(
    sharpness_per_decade=1, power_iterations=5, power_tolerance=0.0, sharpness_chorales=2, device="cpu"
)


@pytest.fixture(scope="module")
def encoded():
    return make_encoded(4, 10, (5, 4, 5, 6), seed=0, n_heldout=1)


@pytest.fixture(autouse=True)
def outside_slurm(monkeypatch):
    for var in device.SLURM_GPU_VARIABLES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine where torch cannot use CUDA (this one, or a GPU node whose CUDA is broken)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("key", ["train.device", "probes.device"])
def test_cuda_without_a_usable_cuda_stops_in_one_line_saying_why(key):
    with pytest.raises(ParamsError) as err:
        device.resolve("cuda", key)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{key}: 'cuda' but torch ")
    assert ("is a CPU build" if torch.version.cuda is None else "sees no usable GPU") in message


@pytest.mark.usefixtures("no_cuda")
def test_training_and_probes_refuse_cuda_rather_than_fall_back(encoded):
    with pytest.raises(ParamsError, match=r"^train\.device: 'cuda' but"):
        train.train_run(encoded, 1, 4, 0, train_config(device="cuda", steps=5), None, False)
    run = train.train_run(encoded, 1, 4, 0, train_config(steps=5), None, False)
    with pytest.raises(ParamsError, match=r"^probes\.device: 'cuda' but"):
        probes.probe_run(run, encoded, dataclasses.replace(PROBES, device="cuda"))


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("variable", device.SLURM_GPU_VARIABLES)
def test_auto_in_a_slurm_job_with_gpus_stops_instead_of_training_on_the_cpu(monkeypatch, variable):
    for value in ["1"] if variable == "SLURM_GPUS_ON_NODE" else ["0", "0,1"]:  # a count; GPU indices
        monkeypatch.setenv(variable, value)
        stop = rf"^train\.device: 'auto' in a SLURM job with GPUs \({variable}={value}\)"
        with pytest.raises(ParamsError, match=stop):
            device.resolve("auto", "train.device")


def test_auto_in_a_slurm_job_with_a_usable_gpu_takes_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    assert device.resolve("auto", "train.device") == torch.device("cuda")


@pytest.mark.usefixtures("no_cuda")
def test_a_slurm_job_without_gpus_trains_on_the_cpu(monkeypatch):
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert device.resolve("auto", "train.device") == torch.device("cpu")


def test_auto_outside_slurm_and_cpu_anywhere_are_what_torch_has(monkeypatch):
    assert device.resolve("auto", "train.device").type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("SLURM_JOB_GPUS", "0")
    assert device.resolve("cpu", "train.device") == torch.device("cpu")  # asked for: no GPU check


def test_an_unknown_device_names_the_parameter():
    with pytest.raises(ParamsError, match=r"^probes\.device: 'gpu' is not one of auto, cpu, cuda$"):
        device.resolve("gpu", "probes.device")


def test_training_and_probes_log_the_device_and_record_it(encoded, caplog):
    cpu = torch.device("cpu")
    device.announce.cache_clear()
    with caplog.at_level(logging.INFO, logger="bachglass.device"):
        run = train.train_run(encoded, 1, 4, 0, train_config(device="cpu", steps=5), None, False)
        probed = probes.probe_run(run, encoded, PROBES)
    lines = [r.getMessage() for r in caplog.records if r.name == "bachglass.device"]
    assert lines == [device.describe(cpu)]  # once per process
    assert lines[0].startswith("device cpu (") and f"torch {torch.__version__}" in lines[0]
    assert torch.backends.cpu.get_cpu_capability() in lines[0]
    recorded = {"device": "cpu", "device_name": "cpu", "cuda_version": torch.version.cuda or "none"}
    assert device.attrs(cpu) == recorded
    assert recorded.items() <= run.attrs.items()
    assert recorded.items() <= probed["sharpness"].attrs.items()
    assert f"torch {torch.__version__}" in run.attrs["software"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_record_their_gpu(encoded):
    run = train.train_run(encoded, 1, 4, 0, train_config(device="cuda", steps=5), None, False)
    assert run.attrs["device"] == "cuda" and run.attrs["device_name"] == torch.cuda.get_device_name(0)
    assert run.attrs["cuda_version"] == torch.version.cuda
