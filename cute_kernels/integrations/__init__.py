"""Drop-ins for models written elsewhere.  Each submodule imports its framework only
when it is imported itself (the framework is an optional dependency):

- `cute_kernels.integrations.transformers`: Hugging Face transformers' Nemotron-H
  (`patch_nemotron_h`, `unpatch`); needs the `transformers` extra.
- `cute_kernels.integrations.chunked_ce`: the LM head + cross-entropy in token chunks
  (`chunked_linear_cross_entropy`, torch only); `hf_chunked_loss` hooks it into a Hugging Face
  causal LM's loss (`patch_nemotron_h(..., chunked_loss=True)`).
"""
