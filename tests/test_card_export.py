"""Model card (renders, metadata parses back, usage snippet runs as written) and the Hub export folder."""

import json
import re
import xml.etree.ElementTree as ElementTree

import pytest
import torch
from huggingface_hub import ModelCard

from model_cards.generate import write_model_card
from tokenization_recbase import RecBaseTokenizer
from training import export, pretrain
from training.checkpoint import write_json_atomically
from training.evaluate import evaluate, results_markdown
from training.fit_item_tokenizer import quality_report


@pytest.fixture(scope="module")
def finished_run(tiny_run, tmp_path_factory):
    """What ``training.main`` leaves: a pretrained folder with its evaluation, tokenizer report and train log."""
    folder = tmp_path_factory.mktemp("finished") / "recbase-test"
    pretrain.main(["--corpus_dir", str(tiny_run["corpus"]), "--tokenizer_dir", str(tiny_run["tokenizer"]),
                   "--output_dir", str(folder), "--domains", "music", "--preset", "recbase-tiny", "--max_steps", "6",
                   "--per_device_batch_size", "8", "--log_every", "2", "--warmup_steps", "1"])
    results = evaluate(folder, tiny_run["corpus"], ["music", "films"], ["films"], negatives=5,
                       cache_dir=tmp_path_factory.mktemp("embeddings"))
    results["run"] = {"preset": "recbase-tiny", "pretrain_domains": ["music"], "zero_shot": ["films"], "num_epochs": 1.0,
                      "per_device_batch_size": 8, "learning_rate": 2e-3, "seconds": 12.0, "hardware": "CPU (2 cores)"}
    write_json_atomically(folder / "eval_results.json", results)
    (folder / "eval_results.md").write_text(results_markdown(results))
    tokenizer = RecBaseTokenizer.from_pretrained(folder)
    keys = list(tokenizer.item_codes)
    raw_codes = torch.tensor([tokenizer.item_codes[key][:3] for key in keys])
    report = quality_report(tokenizer, keys, [key.split("/")[0] for key in keys], raw_codes, ["music"])
    write_json_atomically(folder / "item_tokenizer_report.json", report)
    return folder


def test_card_renders_and_its_metadata_parses_back(finished_run):
    readme = write_model_card(finished_run)
    card = ModelCard.load(readme)
    assert "custom_code" in card.data.tags and card.data.library_name == "transformers"
    results = json.loads((finished_run / "eval_results.json").read_text())
    parsed = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    for domain in ("music", "films"):
        for metric in ("recall@10", "ndcg@10", "auc", "gauc"):
            assert parsed[(domain, metric)] == pytest.approx(results["domains"][domain]["models"]["RecBase"][metric], abs=1e-5)
    assert "films (zero-shot" in card.text and "| films (zero-shot) | " in card.text
    for plot in ("training_loss.svg", "code_usage.svg"):
        assert ElementTree.parse(finished_run / plot).getroot().tag.endswith("svg")
        assert f"]({plot})" in card.text


def test_the_usage_snippet_runs_as_written(finished_run, run_outside_repo):
    write_model_card(finished_run)
    snippet = re.search(r"```python\n(.*?)```", (finished_run / "README.md").read_text(), re.S).group(1)
    lines = run_outside_repo(snippet).strip().splitlines()
    assert len(lines) == 5 and all("music/" in line for line in lines)


def test_export_folder_loads_with_the_auto_classes_and_the_pipeline(finished_run, tmp_path, run_outside_repo):
    folder = export.export_folder(finished_run, tmp_path / "hub" / "recbase-test", model_id="someone/recbase-test")
    names = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "item_table.json", "quantizer.pt",
            "modeling_recbase.py", "configuration_recbase.py", "tokenization_recbase.py", "quantization_recbase.py", "pipeline_recbase.py",
            "README.md", "training_loss.svg", "eval_results.json"} <= names
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
print(type(model).__name__, type(tokenizer).__name__, len(recommend({{"history": ["films/1"]}}, top_k=4, domain="films")))
""")
    assert output.strip().splitlines()[-1] == "RecBaseForCausalLM RecBaseTokenizer 4"


def test_push_without_network_says_so_and_leaves_the_folder_ready(finished_run, tmp_path):
    output_dir = tmp_path / "ready"
    with pytest.raises(SystemExit, match="could not upload to someone/recbase-test .* is ready"):
        export.main(["--checkpoint", str(finished_run), "--output_dir", str(output_dir), "--push_to_hub", "someone/recbase-test"])
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()


def test_export_of_an_unfinished_run_names_what_is_missing(tiny_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="eval_results.json"):
        export.export_folder(tiny_run["checkpoint"], tmp_path / "out")
