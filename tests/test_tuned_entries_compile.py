"""Every shipped tuned entry, as the op resolves it (looked up by its exact shape, then
narrowed where its epilogue needs it), compiles for sm_90a without spills.

A sweep times an entry with one epilogue (no router probability, a bf16 weight gradient);
the op also runs it with the row scale and the router gradient's row sum, or adding into an
fp32 main_grad, which need registers a wide tile or sub-tile lacks, so the op narrows it
(`config.narrowed_for_epilogue`).  This checks those forms too, for the entries in
tuned_configs/sm90 (CPU: compile, PTX without local memory, ptxas spill figures where
ptxas exists)."""
import pytest
import torch

from cute_kernels.config_lookup import clear_cache, tuned_entries, tuned_root
from cute_kernels.epilogue import EpilogueSpec
from cute_kernels.gemm_ops import _kernel_key, _wgrad_key
from cute_kernels.inspect_ptx import find_ptxas, kernel_ptx, ptxas_info

# kernel -> (epilogue variants the op launches it with, operand majorness)
OP_VARIANTS = {
    "fc1_srelu": ([("preact", EpilogueSpec("srelu", store_preact=True)),
                   ("preact_prob", EpilogueSpec("srelu", store_preact=True, row_scale=True))], ("k", "k")),
    "fc2": ([("identity", EpilogueSpec("identity"))], ("k", "k")),
    "fc2_dgrad_dsrelu": ([("dsrelu", EpilogueSpec("dsrelu")),
                          ("postact_prob_rowsum", EpilogueSpec("dsrelu", store_postact=True, row_scale=True,
                                                               row_sum=True))], ("k", "n")),
}


def _entries():
    clear_cache()
    out = []
    for kernel in (*OP_VARIANTS, "weight_grad"):
        for (dtype, n, k, experts), ms in tuned_entries("sm90", kernel).items():
            for m, _cfg in ms:
                out.append((kernel, dtype, m, n, k, experts))
    return out


ENTRIES = _entries()
CASES = [(e, name, epi) for e in ENTRIES if e[0] != "weight_grad" for name, epi in OP_VARIANTS[e[0]][0]]
# weight_grad: a bf16 gradient, or added into an fp32 main_grad (fuse_wgrad_accumulation)
WGRAD_VARIANTS = {"bf16": (torch.bfloat16, False), "fp32_accumulate": (torch.float32, True)}
CASES += [(e, name, None) for e in ENTRIES if e[0] == "weight_grad" for name in WGRAD_VARIANTS]


def test_there_are_entries_to_check():
    assert {e[0] for e in ENTRIES} >= {"fc1_srelu", "fc2", "fc2_dgrad_dsrelu"}


@pytest.mark.parametrize("entry,variant,epi", CASES,
                         ids=[f"{e[0]}-m{e[2]}_n{e[3]}_k{e[4]}_e{e[5]}-{v}" for e, v, _ in CASES])
def test_tuned_entry_compiles_spill_free_as_the_op_runs_it(entry, variant, epi):
    kernel, dtype, m, n, k, experts = entry
    tdtype = getattr(torch, dtype)
    grouped = experts > 0
    if kernel == "weight_grad":  # M, N = the gradient's shape, K = tokens
        out_dtype, accumulate = WGRAD_VARIANTS[variant]
        key = _wgrad_key("sm90", tdtype, m, n, k, experts or 1, grouped, out_dtype, accumulate, ("m", "n"), None,
                         tuned_root())
    else:
        key = _kernel_key(kernel, "sm90", tdtype, m, n, k, experts or 1, epi, grouped, OP_VARIANTS[kernel][1], None,
                          tuned_root())
    ptx = kernel_ptx(key)
    assert ".local" not in ptx, f"local memory in the PTX of {key.cfg}"
    if find_ptxas() is not None:
        info = ptxas_info(ptx)
        assert info.spill_store_bytes == 0 and info.spill_load_bytes == 0, (key.cfg, info.raw[-600:])
        assert info.stack_bytes == 0, (key.cfg, info.raw[-600:])
