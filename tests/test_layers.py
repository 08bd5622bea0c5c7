"""The package's layers (docs/architecture.md §2, `[tool.importlinter]` in pyproject.toml): the contract holds, it
fails when a lower layer imports a higher one (a function-level import included), and no two modules of icg_rl/
import each other in a circle, lazily or not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(cwd)}  # the icg_rl/ under cwd, not the installed one
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "icg_rl", tmp_path / "icg_rl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    images = tmp_path / "icg_rl" / "models" / "images.py"  # models/ reaching up into distributed/, inside a function
    images.write_text(images.read_text() + "\n\ndef _upward():\n    from icg_rl.distributed import trainer\n\n"
                      "    return trainer\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "icg_rl.models is not allowed to import icg_rl.distributed" in result.stdout
    assert "icg_rl.models.images -> icg_rl.distributed.trainer" in result.stdout


def test_no_import_circles_between_modules():
    graph = grimp.build_graph("icg_rl", cache_dir=None)
    modules = sorted(m for m in graph.modules if m != "icg_rl")
    imports = {m: {i for i in graph.find_modules_directly_imported_by(m) if i != "icg_rl"} for m in modules}
    # Tarjan's strongly connected components, iteratively: any component of two or more modules is a circle
    index, low, on_stack, stack, circles, counter = {}, {}, set(), [], [], [0]
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(imports[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(imports.get(child, ())))))
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
                    circles.append(sorted(component))
    assert not circles, f"import circles: {circles}"
