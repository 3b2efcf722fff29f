"""The import graph of cute_kernels/, read from the source with `ast`: no import circle, and the
layers of docs/architecture.md hold.

Decision: every import counts, at module level or inside a function.  A function-level import
defers a cost (the DSL, cutlass, an optional package) or a registration; it is still a dependency
of the module, so it may not close a circle or point up a layer either.  Only the block under
`if __name__ == "__main__":` is left out: it is a script's entry, imported by nobody.  An
arch's entry in archs.py names its modules as strings resolved on demand (a plugin table, not
an import): those are not edges.

No pair is exempt (the FP8 fork kernel and its second compile cache, the last circle, were
deleted when the family's FP8 kernel replaced them, issue 24)."""
import ast
import fnmatch
import os

from cute_kernels.archs import ARCHS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = "cute_kernels"
EXEMPT: set = set()  # pairs of modules allowed to import each other (none)


def package_modules(root: str = ROOT, pkg: str = PKG) -> dict[str, str]:
    """Dotted module name -> source path, for every .py file under `pkg` (packages by their __init__)."""
    mods = {}
    for dirpath, _, files in os.walk(os.path.join(root, pkg)):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    return mods


def _is_main_block(node) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators))


def _targets(mod: str, is_pkg: bool, node, mods) -> list[str]:
    """The package modules an import statement of `mod` loads by name (`from .x import y` gives
    x.y when y is a submodule, else x; parent packages loaded along the way are not edges)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = mod.split(".") if is_pkg else mod.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module
        names = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
    return [n for n in names if n in mods]


def import_graph(mods: dict[str, str]) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in its source but a __main__ block)."""
    graph = {}
    for mod, path in mods.items():
        edges, is_pkg = set(), path.endswith("__init__.py")
        todo = [ast.parse(open(path).read())]
        while todo:
            node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    edges.update(_targets(mod, is_pkg, child, mods))
                elif not _is_main_block(child):
                    todo.append(child)
        graph[mod] = edges - {mod}
    return graph


def circles(graph: dict[str, set[str]], exempt=EXEMPT) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), edges inside an
    exempt pair left out: each is at least one import circle."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if frozenset({v, w}) in exempt:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_circles():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert sorted(circles(g, exempt=set())) == [["a", "b", "c"], ["e", "f"]]
    assert circles(g, exempt={frozenset({"e", "f"})}) == [["a", "b", "c"]]


def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph(package_modules())
    assert "cute_kernels.torch_ops" in g["cute_kernels.mlp"]  # inside a function
    assert "cute_kernels.gemm_base.launch_args" in g["cute_kernels.compile"]  # from .gemm_base.launch_args
    assert "cute_kernels.selfcheck_table" not in g["cute_kernels.selfcheck"]  # only under __main__


def test_no_import_circle_inside_cute_kernels():
    found = circles(import_graph(package_modules()))
    assert not found, f"import circles: {found}"


# ---------------------------------------------------------------- layers (docs/architecture.md)
ARCH_PACKAGES = sorted({a.config_module.rsplit(".", 1)[0] for a in ARCHS.values()})
# Top to bottom: a module imports from its own layer or the ones below it, never above.
LAYERS = [
    ("package, CLI, tools", ["cute_kernels", "cute_kernels.integrations*", "cute_kernels.selfcheck_table",
                             "cute_kernels.inspect_ptx"]),
    ("modules", ["cute_kernels.modules", "cute_kernels.moe"]),
    ("autograd op", ["cute_kernels.mlp", "cute_kernels.fp8.mlp", "cute_kernels.fp8.step_ops",
                     "cute_kernels.autograd_io"]),
    ("custom ops", ["cute_kernels.torch_ops"]),
    ("entry points", ["cute_kernels.gemm_ops", "cute_kernels.fp8.ops", "cute_kernels.fp8.quantize_ops", "cute_kernels.fp8.wgrad_ops",
                      "cute_kernels.fp8.weight_cache", "cute_kernels.fp8.torch_gemm", "cute_kernels.mlp_checks",
                      "cute_kernels.selfcheck", "cute_kernels.host_args", "cute_kernels.launch_plan"]),
    ("registry", ["cute_kernels.registry", "cute_kernels.config_lookup", "cute_kernels.tuned_store"]),
    ("compile", ["cute_kernels.compile"]),
    ("arch kernels", [p + s for p in ARCH_PACKAGES for s in ("", ".*")]),
    ("GEMM base", ["cute_kernels.gemm_base", "cute_kernels.gemm_base.*", "cute_kernels.tile_scheduler"]),
    ("epilogues, torch math", ["cute_kernels.epilogue", "cute_kernels.activations", "cute_kernels.activations.*",
                               "cute_kernels.fp8", "cute_kernels.fp8.epilogue", "cute_kernels.fp8.recipe", "cute_kernels.fp8.grouped_tokens",
                               "cute_kernels.fp8.reference", "cute_kernels.reference"]),
    # the config types' shared part lives with gemm_base but is plain Python the config layer builds on
    ("config, archs, checks", ["cute_kernels.config", "cute_kernels.gemm_base.config_types", "cute_kernels.archs",
                               "cute_kernels.checks", "cute_kernels.first_order", "cute_kernels.wave_model"]),
]


def layer_of(mod: str) -> int | None:
    """The layer naming `mod` itself, else the first whose pattern matches it."""
    for i, (_, patterns) in enumerate(LAYERS):
        if mod in patterns:
            return i
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(mod, p) for p in patterns):
            return i
    return None


def test_every_module_has_a_layer():
    """A new module takes its place in LAYERS (an arch folder is placed by its archs.py entry)."""
    assert [m for m in package_modules() if layer_of(m) is None] == []


def test_imports_go_down_the_layers():
    graph = import_graph(package_modules())
    up = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
          for m, targets in graph.items() for t in sorted(targets)
          if layer_of(t) < layer_of(m) and frozenset({m, t}) not in EXEMPT]
    assert not up, "\n".join(up)


def _imports_of(prefixes, graph):
    return {(m, t) for m, ts in graph.items() for t in ts if any(m == p or m.startswith(p + ".") for p in prefixes)}


def test_the_kernel_layers_import_nothing_from_above():
    """gemm_base knows no arch, no FP8 step and no entry point; an arch folder no entry point,
    custom op, autograd op or module (issue 24)."""
    graph = import_graph(package_modules())

    def hits(sources, banned):
        return sorted((m, t) for m, t in _imports_of(sources, graph)
                      if any(t == b or t.startswith(b + ".") for b in banned) and frozenset({m, t}) not in EXEMPT)

    pkg = "cute_kernels."
    assert hits([pkg + "gemm_base"], ARCH_PACKAGES + [pkg + n for n in ("fp8", "gemm_ops", "mlp")]) == []
    assert hits(ARCH_PACKAGES, [pkg + n for n in ("gemm_ops", "mlp", "torch_ops", "modules")]) == []
