"""The package's layers: each module imports only from the layers left of it (docs/architecture.md).

    errors, units  <-  spec  <-  models  <-  sim  <-  infer  <-  run  <-  io  <-  report
        <-  adapters (Prefect+Dask executor, MLflow tracker)  <-  app  <-  adapters.deploy

Only ``insilico_trials.adapters`` may import Prefect, Dask's distributed scheduler or MLflow.
Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "insilico_trials"

RANK = {
    "errors": 0,
    "units": 0,
    "spec": 1,
    "models": 2,
    "sim": 3,
    "infer": 4,
    "run": 5,
    "io": 6,
    "report": 7,
    "adapters": 8,
    "testing": 8,  # test helpers: library calls only, never the CLI
    "app": 9,
    "adapters.deploy": 10,  # deployable flows wrap the app's commands
}
HEAVY = ("prefect", "prefect_dask", "distributed", "dask.distributed", "mlflow")


def _layer(module: str) -> str | None:
    """``insilico_trials.sim.pk.events`` -> ``sim``; None outside the package's layers."""
    parts = module.split(".")
    if parts[0] != "insilico_trials" or len(parts) < 2:
        return None
    if ".".join(parts[1:3]) in RANK:
        return ".".join(parts[1:3])
    return parts[1] if parts[1] in RANK else None


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, package: Path = PACKAGE) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, package).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from insilico_trials import sim`` names a sub-package
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(package: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(package.rglob("*.py")):
        own = _layer(_module_name(path, package))
        if own is None and path.name != "__init__.py":
            out.append(f"{path.relative_to(package)}: not inside any layer ({', '.join(RANK)})")
            continue
        seen = set()
        for line, name in imports_of(path, package):
            where = f"{path.relative_to(package)}:{line}"
            target = _layer(name)
            heavy = name.split(".")[0] in HEAVY or name.startswith("dask.distributed")
            if heavy and own not in ("adapters", "adapters.deploy") and (line, "heavy") not in seen:
                seen.add((line, "heavy"))
                out.append(f"{where}: imports {name}; only insilico_trials.adapters may")
            if own is None or target is None or target == own or (line, target) in seen:
                continue
            if RANK[target] >= RANK[own]:
                seen.add((line, target))
                out.append(f"{where}: layer {own} imports {name} (layer {target}, not left of it)")
    return out


def test_no_module_imports_upward_or_a_heavy_service_outside_the_adapters():
    assert violations() == []


@pytest.mark.parametrize(
    ("layer", "line", "why"),
    [
        ("sim", "from insilico_trials.run.executor import Serial", "layer sim imports"),
        ("spec", "import insilico_trials.infer.outcomes", "layer spec imports"),
        ("infer", "from insilico_trials.app import cli", "layer infer imports"),
        ("report", "    import mlflow", "only insilico_trials.adapters may"),
        ("io", "from prefect import flow", "only insilico_trials.adapters may"),
        ("sim", "from insilico_trials import io", "layer sim imports"),
    ],
)
def test_an_upward_import_is_caught(tmp_path, layer, line, why):
    """The check fails on a copy of the package with one upward import added (lazy or not)."""
    pkg = tmp_path / "insilico_trials"
    (pkg / layer).mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / layer / "__init__.py").write_text("")
    body = f"def f():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (pkg / layer / "bad.py").write_text(body)
    found = violations(pkg)
    assert len(found) == 1 and why in found[0], found


def test_a_module_outside_the_layers_is_caught(tmp_path):
    pkg = tmp_path / "insilico_trials"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("x = 1\n")
    assert violations(pkg) == ["helpers.py: not inside any layer (" + ", ".join(RANK) + ")"]
