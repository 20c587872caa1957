"""What the benchmark ran on: the CPU model, its cores and whether it has AVX-512 and AMX.

Every benchmark prints ``cpu_line()`` with its figures: TensorFlow's
bfloat16 paths, numba and BLAS all run much faster with AVX-512 (and AMX),
so a figure means little without it.

>>> "AVX-512" in cpu_line()
True
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16")
AMX_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """{'model', 'cores', 'avx512': [flags present], 'amx': [flags present]} from /proc/cpuinfo.

    ``cpuinfo`` is the file's text (read from /proc when None; empty where
    there is none, e.g. on macOS).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or "?", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("?", "", "x86_64"):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"model": model, "cores": os.cpu_count(),
            "avx512": [f for f in AVX512_FLAGS if f in flags], "amx": [f for f in AMX_FLAGS if f in flags]}


def cpu_line(info: dict | None = None) -> str:
    """One line for a benchmark's output, e.g. 'CPU: Xeon ..., 2 cores; AVX-512: yes (avx512f, ...); AMX: no'."""
    info = info or cpu_info()
    avx = f"yes ({', '.join(info['avx512'])})" if info["avx512"] else "no"
    amx = f"yes ({', '.join(info['amx'])})" if info["amx"] else "no"
    return f"CPU: {info['model']}, {info['cores']} cores; AVX-512: {avx}; AMX: {amx}"


if __name__ == "__main__":
    print(cpu_line())
