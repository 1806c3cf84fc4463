"""The math and model layers stay pure (architecture.md principle 1)."""
import ast
import pathlib
import subprocess
import sys

import dvdp_hr

PACKAGE = pathlib.Path(dvdp_hr.__file__).parent
ALLOWED = {"torch", "math", "dataclasses", "typing", "functools", "collections", "logging", "itertools",
           "__future__", "contextlib", "enum", "abc"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module)
    return roots


def test_diffusion_and_models_import_torch_only():
    for layer in ("diffusion", "models"):
        for path in sorted((PACKAGE / layer).glob("*.py")):
            for name in imported_roots(path):
                root = name.split(".")[0]
                if path.name == "attention.py" and root == "xformers":
                    continue
                assert root in ALLOWED or name.startswith(("dvdp_hr." + layer, "dvdp_hr.diffusion")), f"{path.name} imports {name}"
                assert not name.startswith("torch.distributed"), f"{path.name} imports {name}"


def test_importing_diffusion_loads_no_deepspeed():
    code = ("import sys, torch; before = set(sys.modules); import dvdp_hr.diffusion; "
            "new = set(sys.modules) - before; "
            "bad = [m for m in new if m.split('.')[0] in ('deepspeed', 'webdataset', 'wandb', 'numpy')"
            " or m.startswith('torch.distributed')]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_exactly_one_file_imports_deepspeed():
    importers = [p for p in PACKAGE.rglob("*.py") if "deepspeed" in {n.split(".")[0] for n in imported_roots(p)}]
    assert [p.relative_to(PACKAGE).as_posix() for p in importers] in ([], ["distributed/engine.py"])
