"""The SPEC 3.8 device table, with fake hardware, and the environment preparation."""

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retrieval.device import (
    DeviceInfo,
    RuntimePlan,
    apply_runtime,
    autocast,
    make_grad_scaler,
    plan_runtime,
    prepare_environment,
    probe_device,
)
from retrieval.errors import InputError

REPO = Path(__file__).resolve().parents[1]

A100_80 = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", 79.2, (8, 0), 64, 1)
A100_40 = DeviceInfo("cuda", "NVIDIA A100-PCIE-40GB", 39.4, (8, 0), 32, 1)
RTX_3090 = DeviceInfo("cuda", "NVIDIA GeForce RTX 3090", 23.7, (8, 6), 16, 1)
H100_80 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 79.1, (9, 0), 26, 1)
T4 = DeviceInfo("cuda", "Tesla T4", 14.6, (7, 5), 8, 1)
V100 = DeviceInfo("cuda", "Tesla V100-SXM2-32GB", 31.7, (7, 0), 12, 1)
CPU = DeviceInfo("cpu", "x86_64", 16.0, None, 8, 0)
MPS = DeviceInfo("mps", "Apple MPS", 0.0, None, 10, 0)


@pytest.mark.parametrize(
    ("info", "amp_dtype", "workers", "accum", "tf32"),
    [
        (A100_80, "bfloat16", 16, 1, True),
        (A100_40, "bfloat16", 8, 2, True),
        (RTX_3090, "float16", 4, 4, True),  # the table says FP16 although cc 8.6 has BF16
        (H100_80, "bfloat16", 16, 1, True),  # other Ampere+: min(26 - 1, 16) workers, >= 64 GiB
        (T4, "float16", 4, 4, False),
        (V100, "float16", 4, 4, False),
        (CPU, None, 4, 1, False),
    ],
    ids=["a100-80", "a100-40", "rtx3090", "h100", "t4", "v100", "cpu"],
)
def test_table(info, amp_dtype, workers, accum, tf32):
    plan = plan_runtime(info)
    assert plan.device == info.kind
    assert plan.amp_dtype == amp_dtype
    assert plan.use_grad_scaler == (amp_dtype == "float16")
    assert (plan.num_workers, plan.accum_steps, plan.tf32) == (workers, accum, tf32)
    on_cuda = info.kind == "cuda"
    assert plan.cudnn_benchmark == plan.channels_last == plan.pin_memory == on_cuda
    assert plan.torch_threads == (0 if on_cuda else info.cpu_count)


@pytest.mark.parametrize(
    ("memory_gib", "accum"), [(141.0, 1), (64.0, 1), (47.5, 2), (32.0, 2), (22.0, 4)]
)
def test_auto_accumulation_follows_memory(memory_gib, accum):
    info = DeviceInfo("cuda", "NVIDIA L40S", memory_gib, (8, 9), 9, 1)
    plan = plan_runtime(info)
    assert plan.accum_steps == accum
    assert plan.num_workers == 8  # 9 cores, one left for the main process


def test_auto_workers_share_cores_between_gpus():
    info = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 79.1, (9, 0), 32, 8)
    assert plan_runtime(info).num_workers == 3  # 32 cores / 8 GPUs, minus one


def test_named_rows_never_exceed_the_cores():
    small_host = replace(A100_80, cpu_count=6)
    plan = plan_runtime(small_host)
    assert plan.num_workers == 5
    assert "capped" in plan.reason


@pytest.mark.parametrize("cores", [1, 2, 3, 64])
def test_cpu_workers_leave_a_core(cores):
    plan = plan_runtime(replace(CPU, cpu_count=cores))
    assert plan.num_workers == max(0, min(4, cores - 1))
    assert plan.torch_threads == cores


def test_mps_is_refused_with_the_way_out():
    with pytest.raises(InputError, match=r"MPS is not supported.*--device cpu"):
        plan_runtime(MPS)


def test_bf16_off_gives_fp16_with_scaler():
    plan = plan_runtime(A100_80, use_bf16=False)
    assert (plan.amp_dtype, plan.use_grad_scaler) == ("float16", True)
    assert "--use_bf16=false" in plan.reason


def test_bf16_on_for_the_3090_row():
    plan = plan_runtime(RTX_3090, use_bf16=True)
    assert (plan.amp_dtype, plan.use_grad_scaler) == ("bfloat16", False)


@pytest.mark.parametrize("card", [T4, V100], ids=["t4", "v100"])
def test_bf16_on_a_card_without_it_is_an_input_error(card):
    with pytest.raises(InputError, match="no BF16 support"):
        plan_runtime(card, use_bf16=True)


@pytest.mark.parametrize("use_bf16", [True, False])
def test_cpu_never_uses_amp(use_bf16):
    plan = plan_runtime(CPU, use_bf16=use_bf16)
    assert plan.amp_dtype is None
    assert not plan.use_grad_scaler


def test_worker_and_accum_overrides_replace_the_table():
    plan = plan_runtime(A100_40, num_workers=0, accum_steps=8)
    assert (plan.num_workers, plan.accum_steps) == (0, 8)
    assert plan.amp_dtype == "bfloat16"
    assert "num_workers=0 by flag" in plan.reason


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"num_workers": -1}, "num_workers"), ({"accum_steps": 0}, "accum_steps")],
)
def test_bad_overrides(kwargs, match):
    with pytest.raises(InputError, match=match):
        plan_runtime(CPU, **kwargs)


@pytest.mark.parametrize("info", [A100_80, RTX_3090, CPU], ids=["a100", "3090", "cpu"])
def test_describe_names_every_choice(info):
    plan = plan_runtime(info)
    text = plan.describe()
    for word in (
        "device",
        "precision",
        "grad scaler",
        "num_workers",
        "accum_steps",
        "tf32",
        "cudnn.benchmark",
        "channels_last",
        "pin_memory",
        "torch threads",
        "host heap",
        "reason",
    ):
        assert word in text
    assert f"num_workers: {plan.num_workers}" in text
    assert len(text.splitlines()) == 12


def test_prepare_environment_sets_openmp_defaults_without_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hides any GPU: counts as no CUDA
    monkeypatch.delenv("KMP_DUPLICATE_LIB_OK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's own value is kept
    prepare_environment()
    assert os.environ["KMP_DUPLICATE_LIB_OK"] == "TRUE"
    assert os.environ["OMP_NUM_THREADS"] == "3"


def test_prepare_environment_imports_no_torch():
    code = (
        "import sys; from retrieval.device import prepare_environment; prepare_environment(); "
        "import retrieval.data, retrieval.model; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "import os; print(os.environ.get('OMP_NUM_THREADS'))"
    )
    env = {"PATH": "", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_probe_device_on_this_machine():
    info = probe_device()
    assert info.kind in ("cuda", "cpu", "mps")
    assert info.cpu_count >= 1
    assert (info.capability is not None) == (info.kind == "cuda")
    forced = probe_device(device="cpu")
    assert (forced.kind, forced.gpu_count) == ("cpu", 0)


def test_probe_device_rejects_unknown_choice():
    with pytest.raises(InputError, match="--device"):
        probe_device(device="tpu")


def test_cpu_plan_helpers_are_no_ops():
    plan = plan_runtime(replace(CPU, cpu_count=torch.get_num_threads()))
    apply_runtime(plan)
    assert torch.get_num_threads() == plan.torch_threads
    with autocast(plan):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32
    scaler = make_grad_scaler(plan)
    assert not scaler.is_enabled()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_and_scaler_follow_the_plan():
    plan = plan_runtime(probe_device())
    apply_runtime(plan)
    with autocast(plan):
        y = torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
    assert y.dtype == getattr(torch, plan.amp_dtype)
    assert make_grad_scaler(plan).is_enabled() == plan.use_grad_scaler
    assert isinstance(plan, RuntimePlan)


def test_only_a_cpu_plan_on_linux_keeps_the_host_heap(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert plan_runtime(CPU).keep_host_heap == sys.platform.startswith("linux")
    assert not plan_runtime(A100_80).keep_host_heap  # activations live on the GPU
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")  # the user's own choice
    assert not plan_runtime(CPU).keep_host_heap
    assert "host heap: default" in plan_runtime(CPU).describe()
