"""Where a benchmark ran: CPU model, vector ISA, cores, library versions. INT8 and training speed differ 2-3x
between an AVX2 EPYC and an AMX Xeon, so a figure without these is not comparable with another."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("torch", "torchvision", "pytorch-lightning", "onnxruntime", "onnx", "numpy", "opencv-python-headless")


def cpu_info() -> dict[str, object]:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    isa = [f for f in ISA_FLAGS if f in flags]
    return {"cpu": model, "isa": isa, "cores": os.cpu_count()}


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def gpu_info() -> dict[str, object]:
    """The CUDA device torch sees, its driver and torch's CUDA build; empty without one."""
    import subprocess

    import torch

    if not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        driver = "unknown"
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpus": torch.cuda.device_count(), "driver": driver, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def command_line() -> str:
    """The command that is running (a module run with ``-m`` by its name), so a record says which settings made it:
    a smoke run with ``--iters 1`` and a real one look alike otherwise."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name.removesuffix(".__main__")] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def machine_record() -> dict[str, object]:
    """One dict to put at the top of every benchmark record: the machine, its libraries and the command."""
    return {**cpu_info(), **gpu_info(), "versions": library_versions(), "command": command_line()}


def machine_line() -> str:
    info = {**cpu_info(), **gpu_info()}
    gpu = f"{info['gpu']} (driver {info['driver']}, CUDA {info['cuda']}); " if "gpu" in info else ""
    return f"{gpu}{info['cpu']}, {info['cores']} cores, ISA {'/'.join(info['isa']) or 'baseline'}"
