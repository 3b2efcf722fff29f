"""The arch-neutral half of the GEMM family: what every arch's kernel shares.

- `kernel_base`: what every arch's kernel class derives from its config, epilogue, grouping
  and pipeline depth (`GemmKernelBase`: CTA tile, cluster shape, epilogue sub-tile, ...).
- `launch_args`: the kernel's tensor arguments as one typed record (`GemmArgs`).
- `tile_walk`: the persistent walk over cluster tiles (dense, grouped along M, grouped
  along K) and the coordinates of a work index.
- `grouping`: grouped addressing: the ragged store view of a grouped output, an expert's
  K range, the per-expert operand views.
- `descriptors`: the K-grouped kernels' ring of per-CTA TMA descriptors and its writer.
- `config_types`: the fields, dict form and arch-neutral rules every arch's config type shares
  (`TileConfig`, `SmemBudget`, `ConfigError`; plain Python, the config layer builds on it).
- `config_space`: what every arch's search space does with its grid (parse, membership,
  sampling, the full product).
- `flat_args`: the 3-D views a flat-argument kernel (KernelKey.flat_args) builds in its host code
  from the tensors it takes as stored.
- `epilogue_io`: loading an epilogue's declared inputs (aux tile) for a thread's fragment
  and calling the epilogue's hooks per sub-tile.

An arch folder (`cute_kernels/sm90`, `cute_kernels/sm100`) adds its mainloop (MMA
instructions, accumulator storage, pipelines, warp roles) on top.
"""
