"""The package layout: `platform/` is a source root that never shadows the standard library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_is_not_a_package() -> None:
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_still_imports_from_repo_root() -> None:
    code = "import platform, sysconfig; print(platform.system()); print(platform.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    system, module_file = out.stdout.split()
    assert system == platform_system()
    assert Path(module_file).parent != REPO / "platform"
    assert Path(module_file).name == "platform.py"


def platform_system() -> str:
    import platform

    return platform.system()


def test_light_imports() -> None:
    """The model and the plain loop import neither Ray nor MLflow."""
    code = (
        "import sys, llmlab.model, llmlab.train.loop, llmlab.train.optim, llmlab.train.checkpoint, llmlab.config;"
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_module_imports() -> None:
    import importlib

    root = REPO / "platform"
    for path in sorted((root / "llmlab").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        importlib.import_module(name)
