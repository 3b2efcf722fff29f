"""A base for trace-time objects that hold DSL values and cross dynamic control flow.

The DSL carries every variable live across a run-time `if` or `while` as IR values; a
plain Python object holding DSL values (a tile walk, a descriptor ring) must say which
of its attributes are such values.  Subclasses list them in `_traced`; everything else
is trace-time constant."""
from __future__ import annotations

import copy

from cutlass.base_dsl.dsl import extract_mlir_values, new_from_mlir_values


class TracedRecord:
    _traced: tuple = ()

    def __extract_mlir_values__(self):
        values = []
        for name in self._traced:
            values.extend(extract_mlir_values(getattr(self, name)))
        return values

    def __new_from_mlir_values__(self, values):
        new = copy.copy(self)
        values = list(values)
        for name in self._traced:
            old = getattr(self, name)
            n = len(extract_mlir_values(old))
            setattr(new, name, new_from_mlir_values(old, values[:n]))
            values = values[n:]
        return new
