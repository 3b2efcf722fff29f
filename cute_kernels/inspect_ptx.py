"""What a compiled kernel came out as: its PTX and, where a ptxas is installed, the
register, stack and spill figures ptxas reports.  Used by the CI compile tests."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from .compile import KernelKey, compile_kernel


def kernel_ptx(key: KernelKey) -> str:
    """Compile `key` (no GPU needed) and return its PTX.  The DSL writes the PTX to a file
    named after the argument types only and `__ptx__` reads it back, so each compile gets its
    own dump directory (processes compiling in one directory would read each other's)."""
    with tempfile.TemporaryDirectory(prefix="cute_kernels_ptx_") as d:
        return compile_kernel(key, options=f"--keep-ptx --dump-dir={d}").__ptx__


def find_ptxas() -> str | None:
    for cand in [shutil.which("ptxas"), "/usr/local/cuda/bin/ptxas"]:
        if cand and os.path.exists(cand):
            return cand
    return None


@dataclass
class PtxasInfo:
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int
    raw: str


def ptxas_info(ptx: str, arch: str = "sm_90a") -> PtxasInfo:
    """Assemble `ptx` with the system ptxas and parse its resource report.

    The DSL emits a newer PTX ISA version than CUDA 13.0's ptxas accepts; the kernels
    use nothing beyond ISA 9.0, so the version line is lowered to 9.0 for this check.
    """
    ptxas = find_ptxas()
    if ptxas is None:
        raise FileNotFoundError("no ptxas on this machine")
    ptx = re.sub(r"^\.version \d+\.\d+", ".version 9.0", ptx, count=1, flags=re.M)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o", os.path.join(d, "k.cubin")],
                           capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"ptxas failed:\n{out[-3000:]}")
    regs = re.search(r"Used (\d+) registers", out)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return PtxasInfo(int(regs.group(1)), int(frame.group(1)), int(frame.group(2)), int(frame.group(3)), out)
