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


def loaded_after(code: str, modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter; its last stdout line lists which of `modules` it loaded."""
    report = f"print(sorted(m for m in {modules!r} if m in sys.modules))"
    command = [sys.executable, "-c", f"import sys; {code}; {report}", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)


def test_light_imports() -> None:
    """The model and the plain loop import neither Ray nor MLflow."""
    out = loaded_after(
        "import llmlab.model, llmlab.train.loop, llmlab.train.optim, llmlab.train.checkpoint, llmlab.config",
        ("ray", "mlflow"),
    )
    assert out.stdout.strip() == "[]"


def test_every_module_imports() -> None:
    import importlib

    root = REPO / "platform"
    for path in sorted((root / "llmlab").rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        importlib.import_module(name)


HEAVY = ("torch", "ray", "mlflow")


def test_config_modules_import_no_torch_ray_or_mlflow() -> None:
    """Reading and validating an experiment (every command's first step) loads pydantic, not torch."""
    out = loaded_after("import llmlab.config, llmlab.tune.space, llmlab.model, llmlab.parallel", HEAVY)
    assert out.stdout.strip() == "[]"


def test_a_mistake_in_the_experiment_is_reported_before_the_heavy_imports(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lrr: 1}\n")
    commands = ("run", "sweep", "validate")
    code = f"from llmlab.cli import main; print([main([command, sys.argv[1]]) for command in {commands!r}])"
    out = loaded_after(code, HEAVY, str(bad))
    assert out.stdout.split() == ["[2,", "2,", "2]", "[]"], out.stdout + out.stderr
    assert out.stderr.count("error: train.lrr: unknown key") == 3
