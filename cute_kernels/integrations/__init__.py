"""Drop-ins for models written elsewhere.  Each submodule imports its framework only
when it is imported itself (the framework is an optional dependency):

- `cute_kernels.integrations.transformers`: Hugging Face transformers' Nemotron-H
  (`patch_nemotron_h`, `unpatch`); needs the `transformers` extra.
"""
