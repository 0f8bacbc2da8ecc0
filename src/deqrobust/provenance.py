"""Where a result came from: the data archive and the machine that trained a model.

Float training does not reproduce across processors (the quick profile retrained on an AMD
EPYC changed a verdict), so every product says which archive it read and on which machine its
models were trained (docs/results.md): training summaries carry ``machine()``, the table and the
metrics carry ``data_source()``, and the report shows both.
"""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path


def processor() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Processor, architecture, torch's thread count and CPU capability, and the torch, BLAS and
    LAPACK builds, and the GPU when one is used."""
    import torch

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", build)
    lapack = re.search(r"LAPACK_INFO=([^,\s]+)", build)
    return {
        "processor": processor(),
        "architecture": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "blas": blas.group(1) if blas else None,
        "lapack": lapack.group(1) if lapack else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def describe(found: dict | None) -> str:
    """'Intel(R) Xeon(R) Processor (x86_64, AVX512), 1 thread, torch 2.14.1, BLAS mkl'."""
    if not found:
        return "not recorded (trained before the machine was recorded)"
    threads = found.get("threads")
    gpu = f", GPU {found['gpu']}" if found.get("gpu") else ""
    return (
        f"{found.get('processor')} ({found.get('architecture')}, {found.get('cpu_capability')}), "
        f"{threads} thread{'s' if threads != 1 else ''}, torch {found.get('torch')}, BLAS {found.get('blas')}{gpu}"
    )


def data_source(cfg: dict) -> dict:
    """The archive the profile's split was carved from: its MD5 and whether it is the official one."""
    from deqrobust.data import SPLIT_FILE

    path = Path(cfg["data"]["root"]) / SPLIT_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    return {"data_md5": record.get("archive_md5"), "data_official": record.get("official")}
