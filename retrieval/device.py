"""Device and precision, decided in one place (SPEC 3.7 and 3.8).

Nothing else in the project asks torch about the GPU. The flow is

1. ``prepare_environment()``: first thing in every CLI, before torch or faiss load;
2. ``probe_device()``: what the machine has (a ``DeviceInfo``);
3. ``plan_runtime(info, ...)``: a pure function from the hardware (and user overrides) to the
   choices (a ``RuntimePlan``), so the SPEC 3.8 table is testable with fake hardware;
4. ``apply_runtime(plan)``, ``autocast(plan)``, ``make_grad_scaler(plan)``: act on the plan.

Importing this module does not import torch: functions that need it import it inside.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import InputError
from retrieval.host_memory import heap_can_be_kept, keep_freed_host_memory

if TYPE_CHECKING:
    import torch

_GIB = 2**30
_MAX_WORKERS = 16  # more loader processes than this rarely help one GPU at 480 px
_CPU_MAX_WORKERS = 4  # on CPU the model, not decoding, is the bottleneck


def _cuda_present_without_torch() -> bool:
    """Guess whether CUDA is usable without importing torch (which would load OpenMP).

    CUDA counts as present when the NVIDIA kernel driver is loaded (``/proc/driver/nvidia``
    exists) or ``nvidia-smi`` is on PATH, unless ``CUDA_VISIBLE_DEVICES`` hides every GPU
    (set to ``""`` or ``"-1"``: CUDA then reports no device).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def prepare_environment() -> None:
    """Set OpenMP variables on machines without CUDA; imports no torch, so call it first.

    torch and faiss each bring an OpenMP runtime; loaded together on CPU (notably on macOS and
    Windows) they abort with "OMP: Error #15" or deadlock (SPEC 3.7). ``KMP_DUPLICATE_LIB_OK``
    lets both live, ``OMP_NUM_THREADS=1`` stops their thread pools fighting; torch's own
    thread count is set later by ``apply_runtime``. Values the user already set are kept.
    """
    if _cuda_present_without_torch():
        return
    os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass(frozen=True)
class DeviceInfo:
    """What the machine offers; built by ``probe_device``, or by hand in tests."""

    kind: str  # "cuda" | "cpu" | "mps"
    name: str  # GPU name as the driver reports it ("NVIDIA A100-SXM4-80GB"), or the CPU
    memory_gib: float  # memory of one GPU (cuda), system RAM (cpu), 0.0 when unknown
    capability: tuple[int, int] | None  # CUDA compute capability, None off CUDA
    cpu_count: int  # CPU cores this process may use
    gpu_count: int  # visible CUDA devices


@dataclass(frozen=True)
class RuntimePlan:
    """The runtime choices for one training run; ``describe()`` prints them at start."""

    device: str  # "cuda" | "cpu"
    amp_dtype: str | None  # "bfloat16" | "float16" | None (no autocast)
    use_grad_scaler: bool  # True only for float16
    num_workers: int  # DataLoader worker processes
    accum_steps: int  # gradient accumulation: effective batch = P x K x accum_steps
    tf32: bool  # TF32 matmuls and convolutions (Ampere+)
    cudnn_benchmark: bool  # let cuDNN pick kernels for the fixed input size
    channels_last: bool  # NHWC memory format (faster convolutions on tensor cores)
    pin_memory: bool  # page-locked host memory for faster host-to-GPU copies
    torch_threads: int  # torch.set_num_threads value; 0 leaves torch's default
    reason: str  # which row of the table was used, and any overrides
    keep_host_heap: bool = False  # reuse freed host memory, no page faults a step (host_memory)

    def describe(self) -> str:
        """One line per choice, for the log at training start."""
        if self.amp_dtype is None:
            precision = "float32 (no autocast)"
        else:
            precision = f"{self.amp_dtype} autocast"
        scaler = "on (float16 needs loss scaling)" if self.use_grad_scaler else "off"
        threads = str(self.torch_threads) if self.torch_threads else "torch default"
        lines = [
            f"device: {self.device}",
            f"precision: {precision}",
            f"grad scaler: {scaler}",
            f"num_workers: {self.num_workers}",
            f"accum_steps: {self.accum_steps}",
            f"tf32: {_on_off(self.tf32)}",
            f"cudnn.benchmark: {_on_off(self.cudnn_benchmark)}",
            f"channels_last: {_on_off(self.channels_last)}",
            f"pin_memory: {_on_off(self.pin_memory)}",
            f"torch threads: {threads}",
            f"host heap: {'kept (freed memory reused)' if self.keep_host_heap else 'default'}",
            f"reason: {self.reason}",
        ]
        return "\n".join(lines)


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _system_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GIB
    except (AttributeError, ValueError, OSError):
        return 0.0


def probe_device(*, device: str = "auto") -> DeviceInfo:
    """Ask torch what this machine has. All visible GPUs are assumed to be the same model.

    ``device``: "auto" (CUDA, else MPS, else CPU), "cpu" (ignore any GPU: the way round MPS,
    which ``plan_runtime`` refuses) or "cuda" (``InputError`` when no CUDA GPU is visible).
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {device!r} unknown; use auto, cpu or cuda")
    cpu_count = _cpu_count()
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU; use --device cpu or auto")
    if device == "cpu":
        return _cpu_info(cpu_count)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return DeviceInfo(
            kind="cuda",
            name=props.name,
            memory_gib=props.total_memory / _GIB,
            capability=(props.major, props.minor),
            cpu_count=cpu_count,
            gpu_count=torch.cuda.device_count(),
        )
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return DeviceInfo("mps", "Apple MPS", 0.0, None, cpu_count, 0)
    return _cpu_info(cpu_count)


def _cpu_info(cpu_count: int) -> DeviceInfo:
    name = platform.processor() or platform.machine() or "CPU"
    return DeviceInfo("cpu", name, _system_memory_gib(), None, cpu_count, 0)


def _auto_workers(info: DeviceInfo) -> int:
    """Loader workers: the cores one GPU's process may use, one left for the main process."""
    per_gpu = info.cpu_count // max(1, info.gpu_count)
    return max(0, min(per_gpu - 1, _MAX_WORKERS))


def _auto_accum(memory_gib: float) -> int:
    """Accumulation steps from GPU memory.

    EfficientNetV2-L at 480 px is activation-bound: the P x K micro-batch that fits shrinks
    with the card's memory. Accumulating 2 (32-64 GiB) or 4 (below) micro-batches keeps the
    batch the optimiser sees, P x K x accum_steps, near the one used on an 80 GB card, so one
    learning rate serves every card. Accumulation is exact here: ArcFace's softmax runs over
    all classes, not within the batch, and BatchNorm statistics are frozen (see embedder).
    """
    if memory_gib >= 64:
        return 1
    if memory_gib >= 32:
        return 2
    return 4


def _cuda_row(info: DeviceInfo) -> tuple[str, int, int, str]:
    """The SPEC 3.8 row for a CUDA card: (amp dtype, workers, accum steps, row name)."""
    major = info.capability[0] if info.capability else 0
    name = info.name.upper()
    if "A100" in name:
        if info.memory_gib >= 60:
            return "bfloat16", 16, 1, "A100 80GB row"
        return "bfloat16", 8, 2, "A100 40GB row"
    if "3090" in name:
        # The RTX 3090 is Ampere (cc 8.6) and supports BF16, but the SPEC 3.8 table says FP16
        # for it; we follow the table (``use_bf16=True`` opts in to BF16).
        return "float16", 4, 4, "RTX 3090 24GB row"
    if major >= 8:
        workers, accum = _auto_workers(info), _auto_accum(info.memory_gib)
        return "bfloat16", workers, accum, "other Ampere+ row (auto workers/accum)"
    return "float16", 4, 4, "pre-Ampere row"


def _cpu_plan(info: DeviceInfo, use_bf16: bool | None) -> tuple[RuntimePlan, list[str]]:
    notes = ["CPU: no AMP (SPEC 3.7: AMP only on CUDA)"]
    if use_bf16:
        notes.append("use_bf16 ignored on CPU")
    plan = RuntimePlan(
        device="cpu",
        amp_dtype=None,
        use_grad_scaler=False,
        num_workers=max(0, min(_CPU_MAX_WORKERS, info.cpu_count - 1)),
        accum_steps=1,
        tf32=False,
        cudnn_benchmark=False,
        channels_last=False,
        pin_memory=False,
        torch_threads=max(1, info.cpu_count),
        reason="",
        keep_host_heap=heap_can_be_kept(),  # activations live in host memory
    )
    return plan, notes


def _cuda_plan(info: DeviceInfo, use_bf16: bool | None) -> tuple[RuntimePlan, list[str]]:
    amp_dtype, workers, accum, row = _cuda_row(info)
    cc = info.capability or (0, 0)
    notes = [f"{info.name} ({info.memory_gib:.0f} GiB, cc {cc[0]}.{cc[1]}): {row}"]
    if use_bf16 is True and amp_dtype != "bfloat16":
        if cc[0] < 8:
            raise InputError(
                f"--use_bf16=true: {info.name} (compute capability {cc[0]}.{cc[1]}) has no "
                "BF16 support (needs 8.0+, Ampere or newer); drop --use_bf16 to train in FP16"
            )
        amp_dtype = "bfloat16"
        notes.append("BF16 by --use_bf16=true")
    elif use_bf16 is False and amp_dtype == "bfloat16":
        amp_dtype = "float16"
        notes.append("FP16 by --use_bf16=false")
    # Never more workers than cores: the table assumes a well-provisioned server.
    capped = min(workers, max(0, info.cpu_count // max(1, info.gpu_count) - 1))
    if capped < workers:
        notes.append(f"workers capped to {capped} by {info.cpu_count} CPU cores")
    plan = RuntimePlan(
        device="cuda",
        amp_dtype=amp_dtype,
        use_grad_scaler=amp_dtype == "float16",
        num_workers=capped,
        accum_steps=accum,
        tf32=cc[0] >= 8,
        cudnn_benchmark=True,
        channels_last=True,
        pin_memory=True,
        torch_threads=0,
        reason="",
    )
    return plan, notes


def plan_runtime(
    info: DeviceInfo,
    *,
    use_bf16: bool | None = None,
    num_workers: int | None = None,
    accum_steps: int | None = None,
) -> RuntimePlan:
    """Pick precision, loader workers and accumulation for ``info`` (SPEC 3.8's table).

    Pure: no torch, no hardware query. ``None`` means "auto"; a value overrides the table.
    Raises ``InputError`` for Apple MPS, for BF16 on a card without it, and for bad overrides.
    """
    if info.kind == "mps":
        raise InputError(
            "Apple MPS is not supported (Faiss conflicts with it); run on CPU with "
            "--device cpu, or on a CUDA GPU"
        )
    if info.kind not in ("cuda", "cpu"):
        raise InputError(f"device kind {info.kind!r} unknown; expected 'cuda' or 'cpu'")
    if num_workers is not None and num_workers < 0:
        raise InputError(f"--num_workers={num_workers}: must be >= 0 (0 loads in the main process)")
    if accum_steps is not None and accum_steps < 1:
        raise InputError(f"--accum_steps={accum_steps}: must be >= 1 (1 = no accumulation)")
    if info.kind == "cpu":
        plan, notes = _cpu_plan(info, use_bf16)
    else:
        plan, notes = _cuda_plan(info, use_bf16)
    overrides = {}
    if num_workers is not None:
        overrides["num_workers"] = num_workers
        notes.append(f"num_workers={num_workers} by flag")
    if accum_steps is not None:
        overrides["accum_steps"] = accum_steps
        notes.append(f"accum_steps={accum_steps} by flag")
    return replace(plan, reason="; ".join(notes), **overrides)


def apply_runtime(plan: RuntimePlan) -> None:
    """Set the process-wide switches (TF32, cuDNN autotuning, CPU threads, host heap)."""
    import torch

    if plan.keep_host_heap:
        keep_freed_host_memory()

    torch.backends.cuda.matmul.allow_tf32 = plan.tf32
    torch.backends.cudnn.allow_tf32 = plan.tf32
    torch.backends.cudnn.benchmark = plan.cudnn_benchmark
    if plan.device == "cpu" and plan.torch_threads > 0:
        torch.set_num_threads(plan.torch_threads)


def autocast(plan: RuntimePlan) -> contextlib.AbstractContextManager[object]:
    """Autocast for the forward pass: the plan's dtype on CUDA, a no-op otherwise."""
    if plan.device != "cuda" or plan.amp_dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type="cuda", dtype=getattr(torch, plan.amp_dtype))


def make_grad_scaler(plan: RuntimePlan) -> torch.amp.GradScaler:
    """A GradScaler that is active only for FP16 (BF16 has FP32's range and needs none)."""
    import torch

    return torch.amp.GradScaler("cuda", enabled=plan.use_grad_scaler)
