"""The layering holds: every import statement of the tree (at module level or inside a function, where cycles
hid) goes to the importer's own layer or one below it, and no set of modules imports itself round a cycle.

The layers (docs/developer/architecture.md), lowest first; a layer may import the layers listed for it:
- worker.contract: nothing of the project (numpy + pydantic; tests/test_contract.py checks the libraries);
- models: nothing of the project (tests/test_models_standalone.py runs it with the rest unimportable);
- worker.engine, worker.evaluation: the contract and models;
- worker (the fleet worker): the contract, models, the engine, evaluation;
- producer.formats: the contract and models;
- producer: all of the above;
- producer.gateway, and producer.cli (the `producer` command, which registers `producer serve`): the producer,
  the formats and the contract, never the worker's engine or fleet side directly;
- ops/ and tests/: anything (not checked).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("worker", "producer", "models")

CONTRACT, MODELS = "worker.contract", "models"
ENGINE, EVALUATION, WORKER = "worker.engine", "worker.evaluation", "worker"
FORMATS, PRODUCER, GATEWAY, PRODUCER_CLI = "producer.formats", "producer", "producer.gateway", "producer.cli"
MAY_IMPORT = {
    CONTRACT: {CONTRACT},
    MODELS: {MODELS},
    ENGINE: {ENGINE, CONTRACT, MODELS},
    EVALUATION: {EVALUATION, CONTRACT, MODELS},
    WORKER: {WORKER, ENGINE, EVALUATION, CONTRACT, MODELS},
    FORMATS: {FORMATS, CONTRACT, MODELS},
    PRODUCER: {PRODUCER, FORMATS, WORKER, ENGINE, EVALUATION, CONTRACT, MODELS},
    GATEWAY: {GATEWAY, PRODUCER, FORMATS, CONTRACT, MODELS},
    PRODUCER_CLI: {PRODUCER_CLI, GATEWAY, PRODUCER, FORMATS, CONTRACT, MODELS},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer_of(module: str) -> str:
    """The layer a module belongs to: the longest layer name that is the module or a package above it."""
    return max((name for name in MAY_IMPORT if module == name or module.startswith(name + ".")), key=len)


def _project_module(name: str) -> str | None:
    """The project module an import names (`worker.contract.study.Study` -> `worker.contract.study`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[int, str]]:
    """(line, project module) of every import statement in the module, wherever it stands."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
        else:
            continue
        for name in names:
            target = _project_module(name)
            if target is not None and target != module:
                found.append((node.lineno, target))
    return found


def test_every_module_has_a_layer_and_the_layers_are_as_documented():
    assert set(MODULES) >= {"worker.contract.study", "worker.engine.engine", "producer.formats.seg", "producer.cli"}
    assert layer_of("worker.contract.study") == CONTRACT and layer_of("worker.job") == WORKER
    assert layer_of("producer.gateway.app") == GATEWAY and layer_of("producer.cli_options") == PRODUCER
    assert layer_of("worker") == WORKER and layer_of("producer.cli") == PRODUCER_CLI


def test_no_import_runs_against_the_layering():
    offending = [
        f"{MODULES[module].relative_to(ROOT)}:{line} ({layer_of(module)}) imports {target} ({layer_of(target)})"
        for module in MODULES
        for line, target in imports_of(module)
        if layer_of(target) not in MAY_IMPORT[layer_of(module)]
    ]
    assert not offending, "\n".join(offending)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_no_modules_import_each_other_round_a_cycle():
    graph = {module: {target for _, target in imports_of(module)} for module in MODULES}
    assert not _cycles(graph), _cycles(graph)


def test_the_checks_see_a_wrong_import_and_a_cycle():
    """The checks can fail: a worker import in the contract, and the cycle job -> coordinator -> parts -> job."""
    assert ENGINE not in MAY_IMPORT[FORMATS] and WORKER not in MAY_IMPORT[GATEWAY]
    assert layer_of("producer.evaluate") not in MAY_IMPORT[layer_of("worker.calibrate")]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
