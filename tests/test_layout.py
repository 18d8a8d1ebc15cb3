"""The layout's nevers: each pipeline stage imports only the stages below it, and `ui/` reaches the model only through the backend."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> module prefixes it must never import
NEVER = {
    "backend/method": ("diffusers", "transformers", "backend.diffusion", "backend.serving", "backend.evaluation", "backend.build"),
    "backend/diffusion": ("backend.method", "backend.serving", "backend.evaluation", "backend.build"),
    "backend/serving": ("backend.evaluation", "backend.build"),
    "ui": ("torch", "diffusers", "transformers", "backend.diffusion", "backend.method"),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def forbidden_imports(package: str, prefixes: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == p or name.startswith(p + ".") for p in prefixes):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize("package", sorted(NEVER))
def test_package_never_imports_upward_or_across(package):
    assert (ROOT / package).is_dir()
    assert forbidden_imports(package, NEVER[package]) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    fake = tmp_path / "backend" / "method"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text("def f():\n    from diffusers import UNet2DConditionModel\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert forbidden_imports("backend/method", ("diffusers",)) == ["backend/method/leak.py imports diffusers"]


def test_the_app_starts_serving_before_diffusers_loads():
    code = "import sys, app, ui.app, ui.explorer\n"
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # they load with the model, after the server answers


def test_importing_the_method_loads_no_diffusers():
    modules = sorted(p.stem for p in (ROOT / "backend" / "method").glob("*.py") if p.stem != "__init__")
    code = "import sys\n" + "".join(f"import backend.method.{m}\n" for m in modules)
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_names_still_import():
    from backend.bundle import Bundle
    from backend.dynamics import LinearDynamics
    from backend.method.dynamics import LinearDynamics as Moved
    from backend.sae import TopKSAE
    from backend.serving.bundle import Bundle as ServedBundle

    assert LinearDynamics is Moved and Bundle is ServedBundle and TopKSAE.__module__ == "backend.method.sae"


def test_old_commands_still_run():
    for command in ("backend.build", "backend.evaluate"):
        out = subprocess.run([sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert f"python -m {command}" in out.stdout
