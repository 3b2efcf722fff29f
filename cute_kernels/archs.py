"""The GPU architectures the GEMM family targets, in one table, and the one probe of which
arch a device is.

Each entry names the DSL's target, the compute capability that selects it at run time, where
its config rules, search space, config type and kernel class live, and what the code above
asks of it: how its launches choose a config, how the self-check names its variants, whether
it has the block-scaled FP8 mainloop.  A new arch is a folder (`cute_kernels/<arch>/`) plus an
entry here; no other file branches on an arch's name.  Entries are resolved by name
("module:attr") when asked for, so this table imports none of the arch folders."""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Arch:
    name: str
    dsl_target: str  # what `--gpu-arch` takes
    major: int  # compute capability major version that runs it
    config_module: str  # limits, validation reasons, defaults
    space_module: str  # the autotuner's search grid; `selfcheck_configs(quick)`: the self-check table's configs
    kernel: str  # "module:Class" of the GEMM kernel
    config_class: str = "cute_kernels.config:GemmConfig"  # "module:Class" of the config its kernel takes
    # "module:function" that picks a launch's config itself (the caller's, checked, else the arch's
    # default: an arch without tuned entries); "" takes the family's tuned lookup (gemm_ops)
    launch_config: str = ""
    # a config's structural knobs in the self-check's variant names (str.format with cfg= and tall=)
    variant_shape: str = "{cfg.schedule}-c{cfg.cluster_m}x{cfg.cluster_n}"
    # tile_m of the FP8 tile whose warpgroups run two 64-row waves each (its own mainloop, so its own
    # self-check variant: `tall` is then its tile_m, else ""); 0 for none
    wave_tile_m: int = 0
    block_scaled_fp8: bool = False  # the kernel class takes FP8 operands with 1x128 / 128x128 block scales
    gathers_a: bool = False  # the kernel class loads A's rows by index (gather_a: the fused dispatch gather)
    # the kernel class takes its tensors as stored (2-D, or (E, rows, cols) per expert) and builds their
    # (rows, cols, L) views itself (KernelKey.flat_args, gemm_base/flat_args.py)
    flat_args: bool = False
    # "module:Class" of the row softmax cross-entropy kernel (the chunked loss's per-chunk core), "" for none
    softmax_xent: str = ""


ARCHS = {
    "sm90": Arch("sm90", "sm_90a", 9, "cute_kernels.sm90.config", "cute_kernels.sm90.space",
                 "cute_kernels.sm90.gemm:Sm90Gemm", block_scaled_fp8=True, gathers_a=True, flat_args=True,
                 variant_shape="{cfg.schedule}{tall}-c{cfg.cluster_m}x{cfg.cluster_n}", wave_tile_m=256,
                 softmax_xent="cute_kernels.sm90.softmax_xent:Sm90SoftmaxXent"),
    "sm100": Arch("sm100", "sm_100a", 10, "cute_kernels.sm100.config", "cute_kernels.sm100.space",
                  "cute_kernels.sm100.gemm:Sm100Gemm", config_class="cute_kernels.sm100.config:Sm100Config",
                  launch_config="cute_kernels.sm100.launch_config:launch_config",
                  variant_shape="cta{cfg.cta_group}-c{cfg.cluster_m}x{cfg.cluster_n}"),
}


def get_arch(arch: str) -> Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r} (known: {sorted(ARCHS)})") from None


def _resolve(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def arch_config(arch: str):
    """The config-rules module of `arch`."""
    return importlib.import_module(get_arch(arch).config_module)


def arch_space(arch: str, *, block_scaled: bool = False):
    """The search-space module of `arch` (GRID, to_config, to_params, selfcheck_configs); with
    `block_scaled` that of its block-scaled FP8 kernels (named by the space's BLOCK_SCALED_SPACE)."""
    mod = importlib.import_module(get_arch(arch).space_module)
    if not block_scaled:
        return mod
    name = getattr(mod, "BLOCK_SCALED_SPACE", None)
    if name is None:
        raise ValueError(f"arch {arch!r} has no block-scaled FP8 search space")
    return importlib.import_module(name)


def kernel_class(arch: str):
    return _resolve(get_arch(arch).kernel)


def softmax_xent_class(arch: str):
    """`arch`'s row softmax cross-entropy kernel class, or None where it has none."""
    ref = get_arch(arch).softmax_xent
    return _resolve(ref) if ref else None


def config_class(arch: str) -> type:
    """The config type `arch`'s kernel takes."""
    return _resolve(get_arch(arch).config_class)


@functools.lru_cache(maxsize=None)
def config_classes() -> tuple[type, ...]:
    """Every arch's config type (each once)."""
    return tuple(dict.fromkeys(config_class(a) for a in ARCHS))


def launch_config_function(arch: str):
    """`arch`'s own config chooser (see `Arch.launch_config`), or None: the tuned lookup."""
    ref = get_arch(arch).launch_config
    return _resolve(ref) if ref else None


def variant_shape(arch: str, cfg) -> str:
    """The structural knobs of `cfg` as the self-check's variant names spell them (the 256-row
    FP8 tile: "cooperative256-c1x2", which no "cooperative-*" pattern of evidence matches)."""
    entry = get_arch(arch)
    tall = str(cfg.tile_m) if entry.wave_tile_m and getattr(cfg, "tile_m", 0) == entry.wave_tile_m else ""
    return entry.variant_shape.format(cfg=cfg, tall=tall)


def block_scaled_fp8_arches() -> list[str]:
    """The arches whose kernel has the block-scaled FP8 mainloop."""
    return [a.name for a in ARCHS.values() if a.block_scaled_fp8]


def arch_of_capability(major: int) -> str | None:
    """The arch whose kernels run on compute capability `major`.x, or None."""
    return next((a.name for a in ARCHS.values() if a.major == major), None)


def describe_arches(names=None) -> str:
    """'sm90 (sm_90a, compute capability 9.x), sm100 (sm_100a, compute capability 10.x)', of
    `names` (default: every arch), for error messages."""
    return ", ".join(f"{n} ({ARCHS[n].dsl_target}, compute capability {ARCHS[n].major}.x)"
                     for n in (list(ARCHS) if names is None else names))


# ---------------------------------------------------------------- the device probe
@functools.lru_cache(maxsize=None)
def device_capability(index: int) -> tuple[int, int]:
    """(major, minor) of CUDA device `index` (queried once per device)."""
    return tuple(torch.cuda.get_device_capability(index))


@functools.lru_cache(maxsize=None)
def _arch_of_index(index: int) -> str | None:
    return arch_of_capability(device_capability(index)[0])


def cuda_index(device) -> int | None:
    """The CUDA device index of `device` (a torch.device, a device string, an index, or None for
    the current CUDA device), or None when it is not a CUDA device."""
    if isinstance(device, int):
        return device
    if device is None:
        return torch.cuda.current_device()
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


@torch.compiler.assume_constant_result  # a constant of the traced graph under torch.compile
def device_arch(device=None) -> str | None:
    """The arch whose kernels run on `device` (see `cuda_index`), or None: not a CUDA device, or
    no arch here for its compute capability.  The one place that asks a device what it is."""
    index = cuda_index(device)
    return None if index is None else _arch_of_index(index)
