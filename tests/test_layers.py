"""The package's layering (see DESIGN in README "Layout"): no import cycle, and no module imports a
layer above its own. Every ``import`` statement counts, lazy ones inside functions included."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ood_det"

# a module of a layer may import its own layer and the layers listed after it
LAYERS = [
    ("apps",),
    ("tv", "d2"),  # the backends: never each other (checked separately)
    ("evaluation",),
    ("engine",),
    ("modeling", "config", "data"),
    ("heads", "regularizers", "scores", "calibration"),
]


def _modules():
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (p, is_pkg)
    return mods


def import_graph():
    """``{module: set of ood_det modules it imports}``."""
    mods = _modules()
    edges = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    b = ".".join(base + ([node.module] if node.module else []))
                else:
                    b = node.module or ""
                # "from a import b": b may be a submodule; otherwise it is a name of a
                targets = [f"{b}.{a.name}" if f"{b}.{a.name}" in mods else b for a in node.names]
            else:
                continue
            edges[m].update(t for t in targets if t in mods and t != m)
    return edges


def strongly_connected(edges):
    """Tarjan's algorithm: the components with more than one module (= import cycles)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _layer(module):
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return len(LAYERS)  # ood_det itself, unknown: lowest


def test_strongly_connected_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = strongly_connected(import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_a_layer_above_it():
    bad = []
    for m, targets in import_graph().items():
        for t in targets:
            if _layer(t) < _layer(m):
                bad.append(f"{m} -> {t}")
    assert not bad, "imports of a higher layer:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("a,b", [("tv", "d2"), ("d2", "tv")])
def test_backends_do_not_import_each_other(a, b):
    bad = [f"{m} -> {t}" for m, ts in import_graph().items() if m.startswith(f"ood_det.{a}")
           for t in ts if t.startswith(f"ood_det.{b}")]
    assert not bad, bad
