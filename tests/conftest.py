"""Test setup: everything offline, a private module cache, and small shared fixtures."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Must be set before transformers is imported anywhere: the module cache path is read at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="recbase-modules-"))

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FILES = [
    REPO_ROOT / "modeling_recbase" / "configuration_recbase.py",
    REPO_ROOT / "modeling_recbase" / "modeling_recbase.py",
    REPO_ROOT / "modeling_recbase" / "pipeline_recbase.py",
    REPO_ROOT / "tokenization_recbase" / "tokenization_recbase.py",
]


@pytest.fixture
def tiny_config():
    from modeling_recbase import RecBaseConfig

    return RecBaseConfig.from_preset(
        "recbase-tiny", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        codebook_sizes=[8, 8, 8], disambiguation_size=4,
    )


@pytest.fixture
def run_outside_repo(tmp_path):
    """Run Python code in a fresh process whose cwd is outside the repo, offline, with a new module cache."""

    def run(code: str, timeout: int = 300) -> str:
        workdir = tmp_path / "outside"
        workdir.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
               "PYTHONPATH": ""}
        result = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    return run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
