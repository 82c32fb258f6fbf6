"""The library's shape: no import cycles in `shared/` (function-local imports included, which is where cycles
hide), and the stage scripts, the PoC and the benchmarks use only public names of `shared/`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "shared"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in SHARED.rglob("*.py")}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of `shared` that module `name` imports anywhere in its body. `from PKG import X` counts as
    importing PKG.X when that is a module (as Python resolves it), else PKG itself."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("shared"):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, path + [n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_cycle_finder_on_known_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the cycle the old layout had: streaming imported train at function level, train imported streaming
    old = {"shared.streaming": {"shared.train"}, "shared.train": {"shared.streaming"}}
    assert find_cycle(old) == ["shared.streaming", "shared.train", "shared.streaming"]


def test_no_import_cycles_in_shared():
    known = _modules()
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    assert "shared.sampling.generation" in graph and "shared.runs" in graph["shared.sampling.generation"]


def test_scripts_use_public_names_only():
    scripts = [*ROOT.glob("stage*/*.py"), *ROOT.glob("benchmarks/*.py")]
    assert scripts
    for path in scripts:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shared"):
                private = [node.module] if any(p.startswith("_") for p in node.module.split(".")) else []
                private += [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports private {private} from {node.module}"


def test_layout_groups_by_concept():
    """Packages for the model, data, sampling, training and evaluation, the PoC experiment built on them (#35: its
    script stays thin) and the live demo's server over the sampling (#38); few modules at the root (the config and
    the command lines generated from it, the maths of the noise, FLOP accounting, the run folder, the summary CLI,
    user errors and the one-writer lock)."""
    assert {p.name for p in SHARED.iterdir() if (p / "__init__.py").exists()} == {
        "models", "data", "sampling", "training", "evaluation", "poc", "serving"}
    assert {p.stem for p in SHARED.glob("*.py")} == {"__init__", "cli", "config", "diffusion", "errors", "flops",
                                                      "lock", "runs", "summary"}


def _python_files():
    skip = {"runs", "node_modules"}  # and hidden folders (.venv, .git, local scratch)
    return [p for p in ROOT.rglob("*.py")
            if not skip & set(parts := p.relative_to(ROOT).parts) and not any(x.startswith(".") for x in parts)]


def test_the_poc_script_is_thin_and_nothing_imports_it():
    """#35: stage0_poc/run.py is the pipeline at a glance (parse -> data -> train -> evaluate -> decide -> write) over
    `shared.poc`; no script, benchmark or test imports it or loads it as a module."""
    script = ROOT / "stage0_poc" / "run.py"
    assert len(script.read_text().splitlines()) <= 150
    for path in _python_files():
        if path in (script, Path(__file__)):
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                assert not any(a.name in ("run", "stage0_poc.run") for a in node.names), path
            elif isinstance(node, ast.ImportFrom):
                assert node.module != "run" and not (node.module == "stage0_poc" and
                                                      any(a.name == "run" for a in node.names)), path
        assert 'stage0_poc" / "run.py")' not in text or "spec_from_file_location" not in text, path


def test_no_schedule_kind_is_tested_by_name_outside_schedule_py():
    """#35: the kind is resolved once (`schedule.plan`); code elsewhere asks the plan, never compares a kind's name."""
    for path in _python_files():
        if path.name == "schedule.py" or path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                assert not {"rolling", "autoregressive", "full_sequence", "struct_leads"} & set(names), path


def test_the_forward_pass_reads_as_the_method():
    """#35: DualForce.forward is embed -> per layer (video block, struct block, bridge) -> heads, in <= 30 lines."""
    import inspect

    from shared.models import DualForce

    assert len(inspect.getsource(DualForce.forward).splitlines()) <= 30


def test_flags_are_generated_from_typed_configs():
    """#35: command lines come from dataclass fields (`shared.cli`), not hand-written `add_argument` calls: at most
    25 outside the tests (today one, the generator's own)."""
    calls = 0
    for path in _python_files():
        if path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
                calls += 1
    assert calls <= 25, calls


def test_every_generation_goes_through_one_sampler_loop():
    """#35: one way into generation. generate.py and the training samples stream decoded frames
    (`generation.stream_frames`), the evaluation rollouts collect them (`infer.generate`), self-forcing and the
    benchmarks stream latents (`infer.stream`): all of them are `infer.stream`, tensors in -> frames out. Nothing
    outside shared/sampling builds a context or takes a sampler step itself."""
    inner = {"CachedContext", "RecomputeContext", "euler_step", "euler_block", "euler_chunk", "guided", "chunk_rows", "rolling_rows",
             "engine", "steps"}
    for path in _python_files():
        if "sampling" in path.parts or path.parent.name == "tests":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and "sampling" in (node.module or ""):
                names = {a.name for a in node.names} | {node.module.rpartition(".")[2]}
                assert not inner & names, (path, inner & names)
