"""Every shipped FP8 tuned entry (tuned_configs/sm90/fp8_*.yaml), as the FP8 step resolves and
launches it, compiles for sm_90a without spills or serialized WGMMAs.

The sweep timed each entry with one epilogue (FC1 + relu^2 writing FP8 postact, no router
probability; the plain GEMM; the fused dgrad with the postact recompute and no probability);
the step also runs FC1 and the fused dgrad with the router probability (row scale, row sum)
and with or without preact / postact outputs.  `_family_launch_key` falls back to the default
config (with a warning) where a stored entry cannot run a launch's epilogue; this checks that
each resolved key compiles (CPU: PTX without local memory, ptxas figures where ptxas exists)."""
import pytest

from cute_kernels.config_lookup import clear_cache, tuned_entries, tuned_root
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.fp8.epilogue import Fp8Epilogue
from cute_kernels.fp8.ops import _family_launch_key, family_kernel
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

E4M3 = "e4m3"


def _fc1(prob: bool, preact: bool = True):
    return Fp8Epilogue(EpilogueSpec("act", store_preact=preact, row_scale=prob), quantized="postact", q_format=E4M3)


def _dgrad(prob: bool):
    return Fp8Epilogue(EpilogueSpec("dact", store_postact=True, row_scale=prob, row_sum=prob), q_format=E4M3)


# lookup name -> the epilogues the step launches it with
STEP_EPILOGUES = {
    "fp8_fc1_srelu": {"preact": _fc1(False), "preact_prob": _fc1(True), "postact_prob": _fc1(True, preact=False)},
    "fp8_fc2": {"identity": Fp8Epilogue(EpilogueSpec("identity"))},
    "fp8_dgrad_dact": {"postact": _dgrad(False), "postact_prob_rowsum": _dgrad(True)},
}


def _entries():
    clear_cache()
    return [(kernel, dtype, m, n, k, experts) for kernel in STEP_EPILOGUES
            for (dtype, n, k, experts), ms in tuned_entries("sm90", kernel).items() for m, _ in ms]


ENTRIES = _entries()
CASES = [(e, name) for e in ENTRIES for name in STEP_EPILOGUES[e[0]]]


def test_fp8_entries_are_shipped_and_named_by_the_step_launches():
    assert {e[0] for e in ENTRIES} >= {"fp8_fc1_srelu", "fp8_fc2"}
    assert all(e[1] == "float8_e4m3fn" for e in ENTRIES)
    for kernel, epis in STEP_EPILOGUES.items():
        assert all(family_kernel(epi) == kernel for epi in epis.values()), kernel


@pytest.mark.parametrize("entry,variant", CASES, ids=[f"{e[0]}-m{e[2]}_n{e[3]}_k{e[4]}_e{e[5]}-{v}" for e, v in CASES])
def test_tuned_fp8_entry_compiles_spill_free_as_the_step_runs_it(entry, variant):
    kernel, _, m, n, k, experts = entry
    epi = STEP_EPILOGUES[kernel][variant]
    key = _family_launch_key(epi, m, n, k, experts, experts > 0, E4M3, E4M3, None, tuned_root())
    ptx = kernel_ptx(key)
    assert ".local" not in ptx
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, (key.cfg, info.raw[-600:])
        assert "C7514" not in info.raw, "ptxas serialized the WGMMAs"
