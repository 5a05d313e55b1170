"""Pretraining (kill and resume, two processes) and evaluation (constrained ranking, baselines, bad input)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, pipeline

from modeling_recbase import ItemRanker, RankingPolicy, RecBaseConfig, RecBaseForCausalLM
from tests.conftest import tiny_pretraining_flags
from tokenization_recbase import RecBaseTokenizer
from tokenization_recbase.embedding_cache_recbase import EmbeddingCache
from training.baselines import PopularityRecommender, RandomRecommender, TextSimilarityRecommender
from training.checkpoint import load_checkpoint
from training.corpus import load_corpus
from training.evaluate import RecBaseRecommender
from training.pretrain import init_concept_embeddings_from_codebooks
from training.pretraining_data import LengthGroupedSampler, training_windows
from training.protocols import EvaluationSet, build_evaluation_set, evaluate_recommender

REPO_ROOT = Path(__file__).resolve().parents[1]


def pretrain_command(run: dict, output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "training.pretrain",
        *tiny_pretraining_flags(run, output_dir, "music"),
        "--per_device_batch_size",
        "4",
        "--log_every",
        "5",
        "--warmup_steps",
        "2",
        *extra,
    ]


def run_to_end(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_training_windows_cut_long_histories_from_the_end(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    history = [f"music/{i}" for i in range(7)]
    windows = training_windows(tokenizer, [history, history[:1]], 3)["input_ids"]
    # 7 items in windows of 3 from the end: [4,5,6], [1,2,3], then [0] alone teaches nothing and is dropped.
    assert [tokenizer.decode_items(w) for w in windows] == [history[4:], history[1:4]]


def test_length_grouped_batches_cover_every_window_once_and_waste_little_padding():
    lengths = torch.randint(2, 80, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=16, seed=3, group_batches=10)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert order == list(sampler)  # the same (seed, epoch), the same batches: resumable
    sampler.set_epoch(1)
    assert list(sampler) != order

    def padded(indices):
        batches = [indices[i : i + 16] for i in range(0, len(indices), 16)]
        return sum(max(lengths[j] for j in batch) * len(batch) for batch in batches)

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert sum(lengths) / padded(order) > 0.9 > 0.7 > sum(lengths) / padded(shuffled)


def test_codebook_initialised_embeddings_keep_the_codebook_geometry(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    config = RecBaseConfig.from_preset(
        "recbase-tiny",
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=64,
        codebook_sizes=[4, 4, 4],
        disambiguation_size=2,
    )
    model = RecBaseForCausalLM(config)
    init_concept_embeddings_from_codebooks(model, tokenizer, seed=0)
    for level, codebook in enumerate(tokenizer.quantizer.codebooks):
        first = tokenizer.codes_to_token_ids([0] * (level + 1))[level]
        rows = model.get_input_embeddings().weight[first : first + len(codebook)]
        # An orthonormal map and one scale per level: inner products are the codebook's, scaled.
        expected = codebook @ codebook.T
        torch.testing.assert_close(
            rows @ rows.T / (rows @ rows.T).norm(), expected / expected.norm(), atol=1e-5, rtol=1e-4
        )
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_pretraining_killed_mid_run_resumes_to_the_same_end(tiny_run, tmp_path):
    max_steps = "60"
    uninterrupted = tmp_path / "uninterrupted"
    run_to_end(pretrain_command(tiny_run, uninterrupted, "--max_steps", max_steps, "--checkpointing_steps", "5"))

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        pretrain_command(tiny_run, killed, "--max_steps", max_steps, "--checkpointing_steps", "5"),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not (tmp_path / "killed-checkpoints" / "step_10").exists()
        and process.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.safetensors").exists(), "the run ended before it could be killed"
    run_to_end(
        pretrain_command(
            tiny_run,
            killed,
            "--max_steps",
            max_steps,
            "--checkpointing_steps",
            "5",
            "--resume_from_checkpoint",
            "latest",
        )
    )

    log = [json.loads(line) for line in (killed / "logs" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == int(max_steps)
    assert (tmp_path / "killed-checkpoints" / f"step_{max_steps}").is_dir()
    assert len(list((tmp_path / "killed-checkpoints").glob("step_*"))) == 2  # older checkpoints are pruned
    assert not (killed / "checkpoints").exists()  # no pickled training state in the folder one uploads
    model = AutoModelForCausalLM.from_pretrained(killed, trust_remote_code=True)
    assert model.config.codebook_sizes == [4, 4, 4]
    # Resumed exactly: same batches, same RNG, so the same weights as the run that was never stopped.
    resumed, reference = load_file(killed / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-4, atol=1e-5)


def test_ranking_returns_only_real_distinct_items_of_the_domain(tiny_run):
    model, tokenizer = load_checkpoint(tiny_run["checkpoint"])
    corpus = load_corpus(tiny_run["corpus"])
    data = build_evaluation_set(corpus, "films", tokenizer.domain_items("films"), negatives=5)
    ranked = RecBaseRecommender(ItemRanker(model, tokenizer)).rank(data, k=10, exclude_history=False)
    films = set(tokenizer.domain_items("films"))
    assert len(ranked) == 30
    for row in ranked:
        assert len(row) == 10 and len(set(row)) == 10 and set(row) <= films


def test_every_recommender_gives_both_protocols(tiny_run):
    model, tokenizer = load_checkpoint(tiny_run["checkpoint"])
    corpus = load_corpus(tiny_run["corpus"])
    data = build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), negatives=5)
    assert all(row[0] == target and len(set(row)) == 6 for row, target in zip(data.candidates, data.targets))
    cache = EmbeddingCache(cache_dir=tiny_run["root"] / "embeddings")
    for recommender in (
        RecBaseRecommender(ItemRanker(model, tokenizer)),
        TextSimilarityRecommender(tokenizer, cache),
        PopularityRecommender(),
        RandomRecommender(),
    ):
        metrics = evaluate_recommender(recommender, data)
        assert set(metrics) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10", "auc", "gauc"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values()), (recommender.name, metrics)


def test_the_code_head_adds_the_log_likelihood_of_a_full_forward_pass(tiny_run):
    model, tokenizer = load_checkpoint(tiny_run["checkpoint"])
    corpus = load_corpus(tiny_run["corpus"])
    data = build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), max_users=3, negatives=2)
    both = RecBaseRecommender(ItemRanker(model, tokenizer, RankingPolicy(code_score_weight=1.0))).score(data)
    dense = RecBaseRecommender(ItemRanker(model, tokenizer)).score(data)
    scores = [[b - d for b, d in zip(row_both, row_dense)] for row_both, row_dense in zip(both, dense)]
    history, candidate = data.histories[0], data.candidates[0][1]
    ids = torch.tensor([tokenizer.encode_history(history + [candidate])["input_ids"]])
    with torch.no_grad():
        log_probs = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert scores[0][1] == pytest.approx(log_probs[-tokenizer.tokens_per_item :].sum().item(), abs=1e-4)


def test_text_similarity_ranks_the_same_text_first(tiny_run, tmp_path):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    corpus = load_corpus(tiny_run["corpus"])
    data = build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), negatives=5)
    ranked = TextSimilarityRecommender(tokenizer, EmbeddingCache(cache_dir=tiny_run["root"] / "embeddings")).rank(
        data, 3, exclude_history=False
    )
    assert all(row[0] == history[-1] for row, history in zip(ranked, data.histories))


def test_popularity_counts_only_the_training_part(tiny_run):
    corpus = load_corpus(tiny_run["corpus"])
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    data = build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), negatives=5)
    assert sum(len(h) for h in data.train_histories) == 30 * 6  # 8 items per user, last two held out


@pytest.mark.parametrize("exclude_history, ranking", [(False, ["d/a", "d/c", "d/e"]), (True, ["d/a", "d/e", "d/b"])])
def test_popularity_ranks_by_the_training_part_counts_alone(exclude_history, ranking):
    # "d/b" is the most frequent item of the domain, but only as held-out targets, which popularity must not see.
    data = EvaluationSet(
        domain="d",
        items=["d/a", "d/b", "d/c", "d/e"],
        histories=[["d/c"]] * 3,
        targets=["d/b"] * 3,
        candidates=[["d/b", "d/a", "d/c"]] * 3,
        train_histories=[["d/a", "d/a", "d/c"], ["d/a", "d/e"], ["d/c"]],
    )
    recommender = PopularityRecommender()
    assert recommender.rank(data, 3, exclude_history) == [ranking] * 3  # ties keep the catalogue's order
    assert recommender.score(data) == [[0.0, 3.0, 2.0]] * 3


@pytest.mark.parametrize("problem", ["vocabulary", "empty domain", "missing file", "too few negatives"])
def test_bad_input_is_reported_clearly(tiny_run, tmp_path, problem):
    if problem == "vocabulary":
        config = RecBaseConfig.from_preset("recbase-tiny", hidden_size=32, num_hidden_layers=1, codebook_sizes=[8, 8])
        RecBaseForCausalLM(config).save_pretrained(tmp_path)
        RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]).save_pretrained(tmp_path)
        with pytest.raises(
            ValueError, match=r"tokenizer \(codebooks \[4, 4, 4\].*does not match the model \(codebooks \[8, 8\]"
        ):
            load_checkpoint(tmp_path)
        with pytest.raises(ValueError, match=r"pipeline: the tokenizer \(codebooks \[4, 4, 4\].*does not match"):
            pipeline("next-item-generation", model=str(tmp_path), trust_remote_code=True)
    elif problem == "too few negatives":
        corpus = load_corpus(tiny_run["corpus"])
        tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
        with pytest.raises(
            ValueError, match=r"domain 'music': evaluation user #\d+ has seen all but \d+ items, too few for 20"
        ):
            build_evaluation_set(corpus, "music", tokenizer.domain_items("music"), negatives=20)
    elif problem == "empty domain":
        corpus = load_corpus(tiny_run["corpus"])
        with pytest.raises(ValueError, match="domain 'books' has no interactions"):
            build_evaluation_set(corpus, "books", ["books/1"])
    else:
        with pytest.raises(FileNotFoundError, match="tokenizer_config.json is missing"):
            RecBaseForCausalLM(RecBaseConfig.from_preset("recbase-tiny", hidden_size=32)).save_pretrained(tmp_path)
            load_checkpoint(tmp_path)
