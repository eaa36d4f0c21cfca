"""The package's shape, enforced: its parts, the one-way imports between them, no cycles, and a
submitter that never loads TensorFlow or numpy (job/__init__ docstrings and docs/architecture.md
state the rules; this is where they are checked).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.jobs import ROOT, job_env

PACKAGE = ROOT / "job"
HEAVY = ("tensorflow", "keras", "numpy", "matplotlib", "PIL", "boto3", "botocore")
HEAVY += ("ibm_watson_machine_learning", "ibm_watsonx_ai")

# Each part and the parts it may import (itself included). Dependencies point one way:
# cli -> check -> launch / training -> runstore -> config -> errors -> logs.
ALLOWED = {
    "logs": {"logs"},
    "errors": {"errors", "logs"},
    "config": {"config", "errors", "logs"},
    "runstore": {"runstore", "config", "errors", "logs"},
    "training": {"training", "runstore", "config", "errors", "logs", "__init__"},
    "launch": {"launch", "runstore", "config", "errors", "logs", "__init__"},
    "check": {"check", "launch", "training", "runstore", "config", "errors", "logs"},
    "notify": {"notify", "runstore", "config", "errors", "logs"},
    "cli": {
        "cli",
        "check",
        "notify",
        "launch",
        "training",
        "runstore",
        "config",
        "errors",
        "logs",
        "__init__",
    },
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    """`job.training.train` -> training; `job.cli` -> cli; `job` -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def job_imports(path: Path, *, top_level_only: bool = False) -> list[tuple[ast.AST, str]]:
    """(node, imported job module) for each import of a job module in the file; `from job
    import x` counts as `job.x` when that is a module, else as `job` (the package)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "job":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.append((node, child if child in MODULES else node.module))
        elif isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "job"]
    return found


def heavy_modules() -> set[str]:
    """Job modules that load a heavy library when imported (directly or through others)."""
    direct: dict[str, set[str]] = {}
    heavy = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            roots = []
            if isinstance(node, ast.ImportFrom) and node.module:
                roots = [node.module.split(".")[0]]
            elif isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            if any(r in HEAVY for r in roots):
                heavy.add(name)
        direct[name] = {m for _, m in job_imports(path, top_level_only=True)}
    changed = True
    while changed:
        changed = False
        for name, deps in direct.items():
            if name not in heavy and deps & heavy:
                heavy.add(name)
                changed = True
    return heavy


def test_the_package_has_at_most_eight_top_level_modules_and_its_parts_are_subpackages():
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 8, top
    for sub in ("config", "runstore", "training", "launch"):
        init = PACKAGE / sub / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert doc, f"{sub}/__init__.py says what it holds"
        assert sub == "config" or "May import" in doc, f"{sub}/__init__.py says what it may use"


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_each_module_imports_only_the_parts_below_it(module):
    allowed = ALLOWED[part(module)]
    for node, imported in job_imports(MODULES[module]):
        assert part(imported) in allowed, (
            f"{module} imports {imported} (line {node.lineno}): "
            f"{part(module)} may import only {sorted(allowed)}"
        )


def test_no_import_cycles_between_modules():
    """Function-level imports count: a deferred import is still a tie."""
    edges = {
        name: {m for _, m in job_imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    # A package's own modules import it implicitly; only the reverse direction is a tie.
    for name in edges:
        edges[name] = {m for m in edges[name] if not name.startswith(m + ".")}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(edges[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for name in sorted(edges):
        visit(name, [])


def test_a_function_level_import_of_a_job_module_is_deferred_for_a_heavy_dependency():
    """Imports belong at the top; the exception is a module that would load TensorFlow or
    numpy into a command that does not need it, and it says so (`# deferred: why`)."""
    heavy = heavy_modules()
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        top = {n.lineno for n, _ in job_imports(path, top_level_only=True)}
        for node, imported in job_imports(path):
            if node.lineno in top:
                continue
            where = f"{name}:{node.lineno} imports {imported} inside a function"
            assert "# deferred:" in lines[node.lineno - 1], f"{where} without `# deferred:`"
            assert imported in heavy, f"{where}, but it is light: import it at the top"


def test_the_submitter_side_never_imports_a_heavy_library():
    heavy = heavy_modules()
    light_parts = ("launch", "runstore", "config")
    offenders = sorted(m for m in heavy if part(m) in light_parts or m in ("job.cli", "job.check"))
    assert not offenders, f"these load TensorFlow, numpy or a client at import: {offenders}"


def test_the_command_line_starts_without_tensorflow_or_numpy():
    """What the static check promises, seen in a real interpreter: every submitter command's
    modules loaded, and no heavy library among sys.modules."""
    code = (
        "import sys, job.cli, job.launch.submit, job.launch.watch, job.runstore.prune\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=job_env(), cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
