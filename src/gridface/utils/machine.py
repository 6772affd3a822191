"""Where a benchmark ran: CPU model, vector ISA, cores, library versions. INT8 and training speed differ 2-3x
between an AVX2 EPYC and an AMX Xeon, so a figure without these is not comparable with another."""

from __future__ import annotations

import os
import platform
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


def machine_record() -> dict[str, object]:
    """One dict to put at the top of every benchmark record."""
    return {**cpu_info(), "versions": library_versions()}


def machine_line() -> str:
    info = cpu_info()
    return f"{info['cpu']}, {info['cores']} cores, ISA {'/'.join(info['isa']) or 'baseline'}"
