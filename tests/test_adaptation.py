"""Adaptation against training from scratch: SASRec's invariants, one sample of training users for every method,
the adaptation command end to end in its results schema, a LoRA folder ranking as its merged model with the fused
code head weight, "from scratch" starting from a fresh model, and fine-tuning by hand with ``transformers.Trainer``
so that the heads that rank are the heads that train."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from modeling_recbase import RANKING_CONFIG_NAME, ItemRanker, RecBaseForCausalLM
from tests.test_ranking_policy import assert_same_ranking
from tokenization_recbase import RecBaseTokenizer
from training import adapt, pretrain
from training.arguments import LORA_TARGET_MODULES, AdaptArguments, DataArguments, SASRecArguments
from training.checkpoint import load_checkpoint, write_hub_folder
from training.corpus import load_corpus, sample_training_users
from training.pretraining_data import PretrainingCollator, training_windows
from training.protocols import POPULARITY, RANDOM, RECBASE_PRIOR, SASREC, TEXT_SIMILARITY, EvaluationSet
from training.sasrec import PADDING, SASRec, SASRecRecommender

SMALL_SASREC = SASRecArguments(hidden_size=8, num_layers=1, num_heads=1, max_length=4, dropout=0.0)


def test_sasrec_loss_is_the_full_cross_entropy_over_every_item():
    model = SASRec(5, SMALL_SASREC).eval()
    inputs = torch.tensor([[1, 2, 3, PADDING], [4, PADDING, PADDING, PADDING]])
    labels = torch.tensor([[2, 3, 5, PADDING], [1, PADDING, PADDING, PADDING]])
    hidden = model(inputs)
    items = model.item_embeddings.weight[1:]  # (5, hidden): item ID i is row i - 1
    positions = [(0, 0), (0, 1), (0, 2), (1, 0)]
    expected = torch.stack(
        [-torch.log_softmax(hidden[r, t] @ items.T, dim=-1)[labels[r, t] - 1] for r, t in positions]
    ).mean()
    torch.testing.assert_close(model.loss(inputs, labels), expected)
    # Right padding never reaches a real position (causal attention): the rows' outputs are their unpadded ones.
    torch.testing.assert_close(model(inputs[1:, :1]), hidden[1:, :1])


def test_sasrec_ranks_real_items_only_and_leaves_out_the_history():
    items = [f"shop/{i}" for i in range(6)]
    recommender = SASRecRecommender(SASRec(len(items), SMALL_SASREC), items, max_length=4)
    data = EvaluationSet(
        "shop",
        items,
        histories=[["shop/0", "shop/1", "shop/2", "shop/3", "shop/4"], ["shop/5"]],
        targets=["shop/5", "shop/0"],
        candidates=[["shop/5", "shop/0"], ["shop/0", "shop/1", "shop/2"]],
        train_histories=[],
    )
    assert recommender.item_scores(data.histories).shape == (2, 6)  # no column for padding
    every = recommender.rank(data, 6, exclude_history=False)
    assert all(sorted(row) == sorted(items) for row in every)
    kept = recommender.rank(data, 6, exclude_history=True)
    assert [len(row) for row in kept] == [6, 6] and "shop/5" not in kept[1][:5]
    top = recommender.rank(data, 1, exclude_history=True)
    assert top[0] == ["shop/5"] and top[1][0] != "shop/5"
    assert [len(row) for row in recommender.score(data)] == [2, 3]


def test_a_sample_of_training_users_is_one_sample_and_keeps_every_test_user(tiny_run, tmp_path):
    first = load_corpus(sample_training_users(tiny_run["corpus"], "films", 0.5, tmp_path / "a", seed=3))
    again = load_corpus(sample_training_users(tiny_run["corpus"], "films", 0.5, tmp_path / "b", seed=3))
    full = load_corpus(tiny_run["corpus"])
    kept = set(first["train"]["user_id"])
    assert len(kept) == 15 and kept == set(again["train"]["user_id"])
    assert set(first["validation"]["user_id"]) <= kept and set(first["interactions"]["user_id"]) == kept
    assert set(first["train"]["domain"]) == {"films"}
    films_test = full["test"].filter(lambda d: d == "films", input_columns="domain")
    assert first["test"].to_dict() == films_test.to_dict()  # every test user, unchanged


@pytest.fixture(scope="module")
def adapted(tiny_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    results_file = root / "results" / "adaptation.json"
    adapt.main(
        [
            *("--base", str(tiny_run["checkpoint"]), "--corpus_dir", str(tiny_run["corpus"]), "--domains", "films"),
            *("--output_dir", str(root), "--results_file", str(results_file), "--train_fractions", "1.0", "0.5"),
            *("--lora_rank", "2", "--num_epochs", "1", "--min_steps", "4", "--validate_every", "2"),
            *("--per_device_batch_size", "8", "--code_score_weights", "0.5", "--eval_negatives", "5"),
            *("--eval_cache_dir", str(tiny_run["root"] / "embeddings")),
            *("--sasrec_max_epochs", "2", "--sasrec_hidden_size", "8"),
        ]
    )
    return root, json.loads(results_file.read_text())


def test_the_adaptation_command_writes_one_table_per_data_size_in_the_schema(adapted):
    root, written = adapted
    assert [(run["domain"], run["train_fraction"]) for run in written["runs"]] == [("films", 1.0), ("films", 0.5)]
    trained = (adapt.RECBASE_LORA, adapt.RECBASE_FULL, adapt.RECBASE_SCRATCH)
    for run in written["runs"]:
        models = run["models"]
        expected = {adapt.RECBASE_ZERO_SHOT, RECBASE_PRIOR, TEXT_SIMILARITY, POPULARITY, RANDOM, SASREC}
        expected |= {name + suffix for name in trained for suffix in ("", adapt.DENSE_ONLY, adapt.WITH_COUNTS)}
        assert expected <= set(models) and "SASRec" in SASREC
        assert all(name.startswith(("RecBase + LoRA", "RecBase full fine-tune")) for name in trained[:2])
        for metrics in models.values():
            assert {"recall@10", "ndcg@10", "auc", "gauc", "train_minutes"} <= set(metrics)
        assert models[adapt.RECBASE_LORA]["trainable_parameters"] == run["adapter"]["adapter_parameters"]
        # layers * rank * (in + out) summed over q, o (32 -> 32), k, v (32 -> 16) and gate, up, down (32 <-> 64),
        # and the dense projection (32 -> 384), saved whole
        lora = 2 * 2 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64))
        assert run["adapter"]["adapter_parameters"] == lora + 32 * 384
        for name, folder in zip(trained, ("lora", "full", "scratch")):
            chosen = run["code_head"][name]["chosen_weight"]
            assert set(run["code_head"][name]["validation_ndcg@10"]) == {"0.0", "0.5"} and chosen in (0.0, 0.5)
            saved = json.loads(
                (root / "films" / f"train-{run['train_fraction']:g}" / folder / RANKING_CONFIG_NAME).read_text()
            )
            assert saved["code_score_weight"] == chosen == models[name]["code_score_weight"]
            assert models[name + adapt.DENSE_ONLY]["code_score_weight"] == 0.0
    full, half = written["runs"]
    assert half["users"] == full["users"]  # the sample never changes the test users
    assert "### films, 50% of the training users" in (root / "results" / "adaptation.md").read_text()


def test_a_lora_folder_ranks_as_its_merged_model_with_the_fused_weight(adapted, tmp_path):
    root, _ = adapted
    lora_dir = root / "films" / "train-1" / "lora"
    policy_file = lora_dir / RANKING_CONFIG_NAME
    policy_file.write_text(json.dumps({**json.loads(policy_file.read_text()), "code_score_weight": 0.5}))
    model, tokenizer = load_checkpoint(lora_dir)
    assert model.get_base_model().ranking_policy.code_weights(["films/1"], dense_head=True) == [0.5]
    histories, items = [["films/1", "films/5", "films/9"], ["films/2"]], tokenizer.domain_items("films")
    through_lora = ItemRanker(model.eval(), tokenizer).rank(histories, items, 5)
    write_hub_folder(model.merge_and_unload(), tokenizer, tmp_path / "merged")
    merged, _ = load_checkpoint(tmp_path / "merged")
    assert merged.ranking_policy.code_score_weight == 0.5
    assert_same_ranking(through_lora, ItemRanker(merged.eval(), tokenizer).rank(histories, items, 5))


def test_from_scratch_starts_from_a_fresh_model_and_the_adapted_rows_from_the_base(tiny_run, tmp_path):
    base = RecBaseForCausalLM.from_pretrained(tiny_run["checkpoint"])
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.add_(torch.randn_like(parameter))  # a base whose every weight differs from a fresh init's
    write_hub_folder(base, RecBaseTokenizer.from_pretrained(tiny_run["checkpoint"]), tmp_path / "base")
    runs = adapt.training_runs(AdaptArguments(base=str(tmp_path / "base"), corpus_dir="unused", domains=["films"]))
    assert runs[adapt.RECBASE_LORA][0].init_from == runs[adapt.RECBASE_FULL][0].init_from == str(tmp_path / "base")
    scratch_args = runs[adapt.RECBASE_SCRATCH][0]
    assert scratch_args.init_from is None
    tokenizer = RecBaseTokenizer.from_pretrained(tmp_path / "base")
    data = DataArguments(corpus_dir="unused", domains=["films"], tokenizer_dir=str(tmp_path / "base"))
    fresh = pretrain.build_model(data, scratch_args, tokenizer).state_dict()
    for name, weight in base.state_dict().items():
        if name != "model.code_latents.weight":  # the tokenizer's code vectors, copied into every new model
            assert not torch.equal(fresh[name], weight), name


def test_fine_tuning_by_hand_with_trainer_trains_the_heads_that_rank(tiny_run, tmp_path):
    """The README's recipe: the collator adds the dense loss's inputs (each window's item vectors and same-domain
    negatives, from the tokenizer), so a LoRA trained with ``Trainer`` changes the dense ranking."""
    model = AutoModelForCausalLM.from_pretrained(tiny_run["checkpoint"], trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_run["checkpoint"], trust_remote_code=True)
    histories = list(load_corpus(tiny_run["corpus"])["train"]["items"])
    windows = training_windows(tokenizer, histories, model.config.max_history_items)
    collator = PretrainingCollator(tokenizer, num_negatives=8)
    batch = collator([windows[0], windows[1]])
    assert {"item_vectors", "negative_ids", "negative_vectors"} <= set(batch)
    output = model(**batch)
    assert output.dense_loss is not None and output.code_loss is not None
    histories_to_rank, items = [["films/1", "films/5"]], tokenizer.domain_items("films")
    before = ItemRanker(model.eval(), tokenizer).rank(histories_to_rank, items, 5)
    config = LoraConfig(
        task_type="CAUSAL_LM", r=2, target_modules=list(LORA_TARGET_MODULES), modules_to_save=["dense_proj"]
    )
    lora = get_peft_model(model, config)
    arguments = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=10,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        remove_unused_columns=False,  # the collator reads each window's domain
        report_to=[],
        use_cpu=True,
    )
    Trainer(model=lora, args=arguments, train_dataset=windows, data_collator=collator).train()
    after = ItemRanker(lora.eval(), tokenizer).rank(histories_to_rank, items, 5)
    assert [score for _, score in after[0]] != pytest.approx([score for _, score in before[0]])
