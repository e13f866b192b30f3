"""The core stays light: importing the LightningModule or the data module, and a whole `fit`, load none of the tools'
packages (the layers themselves are held by `lint-imports` in `make test`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import QUICK_RUN, subprocess_env

TOOLS_PACKAGES = ("optuna", "optuna_integration", "fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript")
LOADED = f"import sys; print(sorted(m for m in {TOOLS_PACKAGES!r} if m in sys.modules))"


def loaded_after(code: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\n{LOADED}"], cwd=cwd, env=subprocess_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_the_model_and_the_data_module_loads_no_tool() -> None:
    assert loaded_after("import mnist_lightning.model, mnist_lightning.data.module, mnist_lightning.cli") == "[]"


def test_a_fit_loads_no_tool(synthetic_dir: Path, tmp_path: Path) -> None:
    args = ["fit", *QUICK_RUN, f"--data.data_dir={synthetic_dir}", "--test_after_fit=false"]
    code = (
        f"from tests.helpers import trust_synthetic_mnist; trust_synthetic_mnist({str(synthetic_dir)!r})\n"
        f"from mnist_lightning.cli import cli_main; cli_main({args!r})"
    )
    assert loaded_after(code, cwd=tmp_path) == "[]"
