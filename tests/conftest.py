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
# add_items caches embeddings under $RECBASE_CACHE: the tests write theirs to a folder of their own.
os.environ["RECBASE_CACHE"] = tempfile.mkdtemp(prefix="recbase-cache-")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
GENRES = ["jazz", "rock", "folk", "blues"]
SHIPPED_FILES = sorted((REPO_ROOT / "modeling_recbase").glob("*_recbase.py")) + sorted(
    (REPO_ROOT / "tokenization_recbase").glob("*_recbase.py")
)
# The tiny model of the trained shape (dense head, content inputs, popularity buckets: RecBaseConfig()'s heads) on
# the tiny layout of 3 x 4 codes + 2 and a quantizer latent of 8.
TINY_SIZE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    intermediate_size=64,
    codebook_sizes=[4, 4, 4],
    disambiguation_size=2,
    latent_dim=8,
)


@pytest.fixture
def tiny_config():
    from modeling_recbase import RecBaseConfig

    return RecBaseConfig.from_preset(
        "recbase-tiny", **{**TINY_SIZE, "codebook_sizes": [8, 8, 8], "disambiguation_size": 4}
    )


def tiny_pretraining_flags(run: dict, output_dir, *domains: str) -> list[str]:
    """``training.pretrain`` flags for the tiny run's corpus and tokenizer, writing ``output_dir``."""
    return [
        "--corpus_dir",
        str(run["corpus"]),
        "--tokenizer_dir",
        str(run["tokenizer"]),
        "--output_dir",
        str(output_dir),
        "--domains",
        *domains,
    ]


@pytest.fixture
def run_outside_repo(tmp_path):
    """Run Python code in a fresh process whose cwd is outside the repo, offline, with a new module cache."""

    def run(code: str, timeout: int = 300) -> str:
        workdir = tmp_path / "outside"
        workdir.mkdir(exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    return run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A synthetic two-domain corpus (users stay within one genre), a tokenizer with unique codes, item vectors
    (aligned random embeddings, a direction per genre) and a small random quantizer (so unseen items can be
    indexed from their text), and a small random RecBase of the trained shape (``TINY_SIZE``) saved with it as a
    Hub folder (weights, tokenizer, ranking policy, shipped code, pipeline)."""
    from datasets import Dataset

    from modeling_recbase import RecBaseConfig, RecBaseForCausalLM
    from tokenization_recbase import RecBaseTokenizer, ResidualQuantizer, align, fit_domain_alignment
    from training.checkpoint import write_hub_folder
    from training.corpus import write_corpus
    from training.corpus_schema import INTERACTION_FEATURES, ITEM_FEATURES

    root = tmp_path_factory.mktemp("run")
    rng = torch.Generator().manual_seed(0)
    items, interactions = [], []
    for domain in ("music", "films"):
        for i in range(24):
            items.append(
                {
                    "key": f"{domain}/{i}",
                    "domain": domain,
                    "item_id": str(i),
                    "item_type": domain,
                    "title": f"{GENRES[i % 4]} {domain} number {i}",
                    "categories": [GENRES[i % 4]],
                    "brand": "",
                    "description": "",
                    "year": "",
                    "price": "",
                }
            )
        for user in range(30):
            genre = user % 4
            picks = torch.randint(0, 6, (8,), generator=rng) * 4 + genre
            interactions += [
                {"domain": domain, "user_id": f"u{user}", "item_id": str(int(i)), "timestamp": t}
                for t, i in enumerate(picks)
            ]
    corpus_dir = write_corpus(
        Dataset.from_list(items, features=ITEM_FEATURES),
        Dataset.from_list(interactions, features=INTERACTION_FEATURES),
        root / "corpus",
    )

    tokenizer = RecBaseTokenizer(codebook_sizes=[4, 4, 4], disambiguation_size=2)
    codes = {row["key"]: (index % 4, (index // 4) % 4, (index // 16) % 4, 0) for index, row in enumerate(items)}
    tokenizer.set_items(codes, {row["key"]: f"Describe a {row['domain']}: {row['title']}" for row in items})
    quantizer = ResidualQuantizer(input_dim=384, hidden_dims=[16], latent_dim=8, codebook_sizes=[4, 4, 4])
    genres = torch.randn(len(GENRES), 384, generator=rng)
    alignments, vectors = {}, {}
    for domain in ("music", "films"):
        embeddings = genres[torch.arange(24) % len(GENRES)] + 0.5 * torch.randn(24, 384, generator=rng)
        alignments[domain] = fit_domain_alignment(embeddings)
        vectors.update(zip([f"{domain}/{i}" for i in range(24)], align(embeddings, alignments[domain])))
    tokenizer.set_quantizer(quantizer, alignments)
    tokenizer.set_item_vectors(vectors)
    tokenizer_dir = root / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)

    checkpoint = root / "checkpoint"
    config = RecBaseConfig.from_preset("recbase-tiny", **TINY_SIZE)
    model = RecBaseForCausalLM(config)
    with torch.no_grad():
        model.model.code_latents.weight.copy_(tokenizer.code_latent_table(config.vocab_size))
    checkpoint.mkdir()
    write_hub_folder(model, tokenizer, checkpoint)
    return {"root": root, "corpus": corpus_dir, "tokenizer": tokenizer_dir, "checkpoint": checkpoint}
