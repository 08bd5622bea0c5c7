"""Training, rewards and models must never see the oracle: only world/ and evaluation code may import it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "icg_rl"
ALLOWED = ("world/", "evaluation/")


def imports_oracle(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n.endswith("oracle") or ".oracle." in n for n in names):
                return True
        elif isinstance(node, ast.Import) and any(a.name.endswith("oracle") for a in node.names):
            return True
    return False


def test_only_world_and_evaluation_import_the_oracle():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if not str(p.relative_to(PACKAGE)).startswith(ALLOWED) and imports_oracle(p)]
    assert offenders == [], f"these modules import the oracle: {offenders}"


def test_the_check_catches_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from icg_rl.world.oracle import Oracle\n")
    assert imports_oracle(bad)
    bad.write_text("from icg_rl.world import oracle\n")
    assert imports_oracle(bad)
