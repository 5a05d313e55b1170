"""Invariants of the learned parts the frame-invariant screen measures: each starts as the prior exactly, the pair
kernel and the typicality features are the same whatever the rotation of a domain's frame, hard negatives are the
prior's top items, the losses equal their definitions on hand-made numbers; and the screen runs end to end on a tiny
corpus."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F

import benchmarks.frame_invariant_screen as screen
from benchmarks.frame_invariant_screen import (
    PARTS,
    DomainTable,
    FrameInvariantHead,
    ScoreSum,
    TopReranked,
    WorstDomainWeights,
    batch_losses,
    hard_negatives,
    main,
    sampled_loss,
    train,
    training_pairs,
    typicality_features,
    whitened_prior,
)
from tokenization_recbase import RecBaseTokenizer
from training.corpus import load_corpus


def history_and_items(dim: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(3, 10, dim) histories, the second one only 4 items long; 30 unit item vectors; their centre."""
    generator = torch.Generator().manual_seed(0)
    history = torch.randn(3, 10, dim, generator=generator)
    history[1, 4:] = 0
    items = F.normalize(torch.randn(30, dim, generator=generator), dim=-1)
    return history, items, items.mean(0)


def typicality_of(history: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Made-up typicality features (2 per item) of 30 items and of the (3, 10) history, zero where no item."""
    generator = torch.Generator().manual_seed(3)
    return torch.randn(len(items), 2, generator=generator), torch.randn(*history.shape[:2], 2, generator=generator) * (
        history.norm(dim=-1, keepdim=True) > 0
    )


@pytest.mark.parametrize("part", list(PARTS))
def test_every_part_scores_as_the_prior_at_init(part):
    history, items, centre = history_and_items()
    prior = FrameInvariantHead(False, False, 16).scores(history, items, centre)
    scores = PARTS[part].head(16).scores(history, items, centre, typicality_of(history, items))
    torch.testing.assert_close(scores, prior)


def test_the_typicality_features_are_z_scored_distance_and_density_unchanged_by_rotating_the_frame():
    vectors = torch.randn(40, 16, generator=torch.Generator().manual_seed(4))
    features = typicality_features(vectors)
    unit = F.normalize(vectors, dim=-1)
    cosines = (unit @ unit.T).fill_diagonal_(-2.0)
    by_hand = torch.stack([vectors.norm(dim=-1).log(), cosines.topk(10, dim=-1).values.mean(-1)], -1)
    by_hand = (by_hand - by_hand.mean(0)) / by_hand.std(0)
    torch.testing.assert_close(features, by_hand)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(typicality_features(vectors @ rotation), features, atol=1e-5, rtol=1e-4)
    # Chunking changes only the matmul's blocking, so rounding: equal to float32 precision, not bit for bit.
    torch.testing.assert_close(typicality_features(vectors, chunk=7), typicality_features(vectors))


def test_a_trained_typicality_bias_adds_its_formula_to_the_prior():
    history, items, centre = history_and_items()
    item_features, history_features = typicality_of(history, items)
    head = PARTS["candidate typicality"].head(16)
    with torch.no_grad():
        head.typicality.slopes.normal_(generator=torch.Generator().manual_seed(6))
        head.typicality.with_history.normal_(generator=torch.Generator().manual_seed(7))
    weights = 0.5 ** torch.arange(10.0) * (history.norm(dim=-1) > 0)
    mean = (weights[..., None] * history_features).sum(1) / weights.sum(1, keepdim=True)  # (3, 2)
    slopes, knots = head.typicality.slopes, torch.linspace(-2.0, 2.0, 5)
    alone = sum(
        slopes[f, 0] * item_features[:, f] + (slopes[f, 1:] * F.relu(item_features[:, f, None] - knots)).sum(-1)
        for f in range(2)
    )  # (30,)
    expected = FrameInvariantHead(False, False, 16).scores(history, items, centre) + alone
    expected = expected + (mean * head.typicality.with_history) @ item_features.T
    scores = head.scores(history, items, centre, (item_features, history_features))
    torch.testing.assert_close(scores, expected)
    # The same bias for candidates given per user (B, C, F), as in candidate scoring.
    per_user = head.scores(history, items, centre, (item_features.expand(3, -1, -1), history_features))
    torch.testing.assert_close(per_user, expected)
    with pytest.raises(ValueError, match="typicality features"):
        head.scores(history, items, centre)


def test_the_prior_is_the_centred_cosine_to_the_weighted_history():
    history, items, centre = history_and_items()
    weights = 0.5 ** torch.arange(10.0) * (history.norm(dim=-1) > 0)
    query = F.normalize((weights[..., None] * F.normalize(history, dim=-1)).sum(1), dim=-1)
    expected = query @ (items - centre).T / 0.1
    torch.testing.assert_close(FrameInvariantHead(False, False, 16).scores(history, items, centre), expected)


def test_a_trained_pair_kernel_is_unchanged_by_rotating_the_frame():
    history, items, centre = history_and_items()
    head = FrameInvariantHead(False, False, 16, pair_kernel=True)
    with torch.no_grad():
        head.pair_kernel.slopes.normal_(generator=torch.Generator().manual_seed(1))
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(2)))
    scores = head.scores(history, items, centre)
    assert not torch.allclose(scores, FrameInvariantHead(False, False, 16).scores(history, items, centre))
    torch.testing.assert_close(head.scores(history @ rotation, items @ rotation, centre @ rotation), scores)


def test_the_pair_kernel_does_not_combine_with_axis_weights():
    with pytest.raises(ValueError, match="axis weights"):
        FrameInvariantHead(False, True, 16, pair_kernel=True)


def test_the_shared_frame_undoes_the_domains_rotation_and_keeps_its_cosines_and_the_prior(tiny_run):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    aligned, shared = DomainTable(tokenizer, "music"), DomainTable(tokenizer, "music", shared_frame=True)
    rotation = tokenizer.domain_alignments["music"]["rotation"].float()
    assert not torch.allclose(shared.vectors, aligned.vectors, atol=1e-3)
    torch.testing.assert_close(shared.vectors @ rotation, aligned.vectors, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.unit @ shared.unit.T, aligned.unit @ aligned.unit.T, atol=1e-5, rtol=1e-4)
    prior, histories = FrameInvariantHead(False, False, aligned.unit.shape[1]), [["music/0", "music/4"], ["music/1"]]
    for_frame = [
        prior.scores(table.history_vectors(histories), table.unit, prior.centre(table)) for table in (aligned, shared)
    ]
    torch.testing.assert_close(*for_frame, atol=1e-4, rtol=1e-4)


def test_a_trained_shared_adapter_is_one_linear_map_of_the_shared_frame_then_the_prior():
    history, items, _ = history_and_items()
    head = PARTS["shared adapter"].head(16)
    with torch.no_grad():
        head.adapter_up.normal_(generator=torch.Generator().manual_seed(1))
    mapping = torch.eye(16) + head.adapter_down @ head.adapter_up  # (D, D), row vectors times it
    mapped_items = F.normalize(items @ mapping, dim=-1)
    centre = mapped_items.mean(0)
    weights = 0.5 ** torch.arange(10.0) * (history.norm(dim=-1) > 0)
    query = F.normalize(((weights[..., None] * F.normalize(history, dim=-1)).sum(1)) @ mapping, dim=-1)
    expected = query @ (mapped_items - centre).T / 0.1
    torch.testing.assert_close(head.scores(history, items, head.transform(items).mean(0)), expected)
    assert not torch.allclose(expected, FrameInvariantHead(False, False, 16).scores(history, items, items.mean(0)))


def test_hard_negatives_are_the_priors_top_items_less_the_history_and_the_next_item(tiny_run):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    batch = [(["music/0", "music/4", "music/8"], "music/12"), (["music/1"], "music/5")]
    negatives = hard_negatives(table, batch, 5)
    prior = FrameInvariantHead(False, False, table.unit.shape[1])
    scores = prior.scores(table.history_vectors([history for history, _ in batch]), table.unit, prior.centre(table))
    for row, (history, target) in enumerate(batch):
        excluded = {table.row[key] for key in {*history, target}}
        chosen = set(negatives[row].tolist())
        assert len(chosen) == 5 and not chosen & excluded
        others = [i for i in range(len(table.keys)) if i not in chosen | excluded]
        assert scores[row, list(chosen)].min() >= scores[row, others].max()


def test_the_catalogue_softmax_loss_is_its_definition_on_a_hand_made_batch():
    # Two users; the next item's score first, then two uniformly drawn negatives of a 10-item catalogue, each standing
    # for 5 items; the second user's first negative is its next item drawn again (masked).
    scores = torch.tensor([[2.0, 1.0, 0.5], [0.3, float("-inf"), 1.2]])
    by_hand = [
        -2.0 + math.log(math.exp(2.0) + 5 * math.exp(1.0) + 5 * math.exp(0.5)),
        -0.3 + math.log(math.exp(0.3) + 5 * math.exp(1.2)),
    ]
    torch.testing.assert_close(sampled_loss(scores, catalogue_size=10), torch.tensor(sum(by_hand) / 2))
    plain = [
        -2.0 + math.log(math.exp(2.0) + math.exp(1.0) + math.exp(0.5)),
        -0.3 + math.log(math.exp(0.3) + math.exp(1.2)),
    ]
    torch.testing.assert_close(sampled_loss(scores), torch.tensor(sum(plain) / 2))


def full_softmax_by_hand(table: DomainTable, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's cross-entropy of its next item over the whole catalogue, the history's other items left out, and
    the number of items the prior ranks above the next item among those left in, computed one pair at a time."""
    prior = FrameInvariantHead(False, False, table.unit.shape[1])
    losses, ranks = [], []
    for history, target in batch:
        scores = prior.scores(table.history_vectors([history]), table.unit, prior.centre(table))[0]
        kept = [i for key, i in table.row.items() if key == target or key not in history]
        losses.append(torch.logsumexp(scores[kept], 0) - scores[table.row[target]])
        ranks.append(int((scores[kept] > scores[table.row[target]]).sum()))
    return torch.stack(losses), torch.tensor(ranks)


BATCH = [
    (["music/0", "music/4", "music/8"], "music/12"),
    (["music/1", "music/5"], "music/1"),  # the next item repeats a history item: it stays in the softmax
    (["music/2"], "music/3"),
    (["music/7", "music/11"], "music/6"),
    (["music/9", "music/13", "music/17"], "music/21"),
]


def test_the_full_softmax_loss_is_the_cross_entropy_over_the_catalogue_less_the_history(tiny_run):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    prior = FrameInvariantHead(False, False, table.unit.shape[1])
    by_hand, _ = full_softmax_by_hand(table, BATCH)
    (loss,) = batch_losses([prior], table, BATCH, PARTS["history weights, full softmax"], torch.Generator())
    torch.testing.assert_close(loss, by_hand.mean())


def test_top_pairs_count_only_the_pairs_whose_next_item_the_prior_ranks_near_the_top(tiny_run, monkeypatch):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    by_hand, ranks = full_softmax_by_hand(table, BATCH)
    monkeypatch.setattr(screen, "TOP_PAIRS", 3)
    counted = ranks < 3
    assert 0 < counted.sum() < len(BATCH)  # the batch has pairs on both sides of the cut
    part, prior = PARTS["pair kernel, full softmax, top pairs"], FrameInvariantHead(False, False, table.unit.shape[1])
    (loss,) = batch_losses([prior], table, BATCH, part, torch.Generator())
    torch.testing.assert_close(loss, by_hand[counted].mean())
    # The part's loss is counted on the same pairs, the ones the prior chose.
    head = part.head(table.unit.shape[1])
    with torch.no_grad():
        head.pair_kernel.slopes.normal_(generator=torch.Generator().manual_seed(8))
    (trained,) = batch_losses([head], table, BATCH, part, torch.Generator())
    kept = [pair for pair, count in zip(BATCH, counted) if count]
    (on_kept,) = batch_losses([head], table, kept, PARTS["pair kernel, full softmax"], torch.Generator())
    torch.testing.assert_close(trained, on_kept)


def test_the_full_and_sampled_softmax_is_the_sum_of_both_losses_on_the_same_scores(tiny_run):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    prior = FrameInvariantHead(False, False, table.unit.shape[1])
    full, _ = full_softmax_by_hand(table, BATCH)
    negatives = torch.randint(
        len(table.keys), (len(BATCH), screen.NEGATIVES), generator=torch.Generator().manual_seed(9)
    )
    sampled = []
    for (history, target), drawn in zip(BATCH, negatives.tolist()):
        scores = prior.scores(table.history_vectors([history]), table.unit, prior.centre(table))[0]
        left_out = {table.row[key] for key in history} - {table.row[target]}  # as in the full softmax
        others = [scores[i] for i in drawn if i != table.row[target] and i not in left_out]
        sampled.append(
            torch.logsumexp(torch.stack([scores[table.row[target]], *others]), 0) - scores[table.row[target]]
        )
    part = PARTS["axis weights, full and sampled softmax"]
    (loss,) = batch_losses([prior], table, BATCH, part, torch.Generator().manual_seed(9))
    torch.testing.assert_close(loss, full.mean() + torch.stack(sampled).mean())


def test_the_whitened_prior_is_the_prior_on_axes_scaled_by_their_spread_and_sums_with_it(tiny_run):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    prior, histories = FrameInvariantHead(False, False, table.unit.shape[1]), [h for h, _ in BATCH]
    vectors = table.history_vectors(histories)
    plain = prior.scores(vectors, table.unit, prior.centre(table))
    torch.testing.assert_close(whitened_prior(table, 0.0).scores(vectors, table.unit, prior.centre(table)), plain)
    # Power 1: the prior computed on the vectors with every axis divided by its standard deviation (24 items span
    # fewer axes than the vectors have: an axis without spread counts as having a millionth of the largest variance).
    variances = table.vectors.var(0)
    assert variances.min() < variances.max() * 1e-6
    spread = variances.clamp(min=variances.max() * 1e-6).sqrt()
    unit = F.normalize(table.unit / spread, dim=-1)
    weights = 0.5 ** torch.arange(10.0) * (vectors.norm(dim=-1) > 0)
    query = F.normalize((weights[..., None] * F.normalize(vectors, dim=-1)).sum(1) / spread, dim=-1)
    by_hand = query @ (unit - unit.mean(0)).T / 0.1
    whitened = whitened_prior(table, 1.0)
    torch.testing.assert_close(whitened.scores(vectors, table.unit, whitened.centre(table)), by_hand)
    summed = ScoreSum([prior, whitened])
    torch.testing.assert_close(summed.scores(vectors, table.unit, summed.centre(table)), plain + by_hand)


def test_a_top_reranked_prior_reorders_only_the_priors_top_items(tiny_run):
    table = DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "music")
    prior, histories = FrameInvariantHead(False, False, table.unit.shape[1]), [h for h, _ in BATCH]
    vectors = table.history_vectors(histories)
    plain = prior.scores(vectors, table.unit, prior.centre(table))  # (5, 24)
    reranker = whitened_prior(table, 1.0)
    other = reranker.scores(vectors, table.unit, reranker.centre(table))
    head = TopReranked(reranker, table, top=5)
    scores = head.scores(vectors, table.unit, head.centre(table))
    inside = torch.zeros_like(plain, dtype=torch.bool).scatter_(1, plain.topk(5, dim=-1).indices, True)
    torch.testing.assert_close(scores[~inside], plain[~inside])
    torch.testing.assert_close(scores[inside], other[inside] + TopReranked.OFFSET)
    assert (scores[inside].view(5, 5).min(-1).values > scores[~inside].view(5, 19).max(-1).values).all()
    # Candidates given per user are judged against the whole catalogue's top, as in candidate scoring.
    rows = torch.tensor([[0, 3, 7, 11, 20]] * len(BATCH))
    per_user = head.scores(vectors, table.unit[rows], head.centre(table))
    torch.testing.assert_close(per_user, scores.gather(1, rows))


def test_the_worst_domain_weights_follow_each_domains_running_excess_over_the_prior():
    weights = WorstDomainWeights(3, step_size=2.0)
    first = weights.loss(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.9, 2.05, 0.5]))
    torch.testing.assert_close(
        first, (torch.softmax(2.0 * torch.tensor([0.1, -0.05, 0.0]), 0) * torch.tensor([0.1, -0.05, 0.0])).sum()
    )
    losses = torch.tensor([1.0, 2.0, 0.6], requires_grad=True)
    prior = torch.tensor([1.0, 1.9, 0.5], requires_grad=True)
    second = weights.loss(losses, prior)
    running = torch.tensor([0.1, -0.05, 0.0]) + torch.tensor([0.0, 0.1, 0.1])  # the sums of the two steps' excess
    q = torch.softmax(2.0 * running, 0)
    torch.testing.assert_close(second, (q * torch.tensor([0.0, 0.1, 0.1])).sum())
    second.backward()
    # The step goes to each domain by its weight; the prior's losses get no gradient.
    torch.testing.assert_close(losses.grad, q)
    assert prior.grad is None


def test_a_worst_domain_step_scores_the_part_and_the_prior_on_every_training_domain(tiny_run, monkeypatch):
    tokenizer, corpus = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), load_corpus(tiny_run["corpus"])
    tables = {domain: DomainTable(tokenizer, domain) for domain in ("music", "films")}
    pairs = {domain: training_pairs(corpus, domain) for domain in tables}
    calls, batch_losses = [], screen.batch_losses

    def recorded(heads, table, batch, part, generator):
        calls.append((len(heads), next(d for d, t in tables.items() if t is table), len(batch)))
        return batch_losses(heads, table, batch, part, generator)

    monkeypatch.setattr(screen, "batch_losses", recorded)
    part = PARTS["history weights, worst domain"]
    head = part.head(tables["music"].unit.shape[1])
    train(head, tables, pairs, steps=2, seed=0, part=part)
    # Each step: the part and the prior, on a batch of each domain, 256 pairs split between them.
    assert calls == [(2, "films", 128), (2, "music", 128)] * 2
    assert head.history_weights.fc_out.weight.abs().sum() > 0


def test_the_screen_writes_its_gain_table(tiny_run, tmp_path, monkeypatch):
    results = tmp_path / "screen"
    arguments = ["--tokenizer_dir", str(tiny_run["tokenizer"]), "--corpus_dir", str(tiny_run["corpus"])]
    arguments += ["--pretraining_domains", "music", "films", "--held_out", "films", "--steps", "2", "--users", "10"]
    arguments += ["--negatives", "5", "--measure_every", "1"]
    arguments += ["--parts", "pair kernel, hard negatives", "shared adapter", "candidate typicality"]
    arguments += ["pair kernel, worst domain", "axis weights, full and sampled softmax"]
    arguments += ["--whitening_powers", "1", "--results", str(results)]
    monkeypatch.setattr(sys, "argv", ["frame_invariant_screen", *arguments])
    main()
    fold = json.loads(results.with_suffix(".json").read_text())["folds"]["films"]
    parts = {"pair kernel, hard negatives", "shared adapter", "candidate typicality", "pair kernel, worst domain"}
    parts |= {"axis weights, full and sampled softmax", "whitened prior, power 1", "prior + whitened prior, power 1"}
    assert set(fold) == {"prior", *parts}
    assert (
        len(fold["axis weights, full and sampled softmax"]["axis_weights"])
        == DomainTable(RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"]), "films").unit.shape[1]
    )
    table = results.with_suffix(".md").read_text()
    assert "| films | pair kernel, hard negatives |" in table and "| films | shared adapter |" in table
    assert "| films | prior + whitened prior, power 1 |" in table and "| prior + whitened prior, power 1 |" in table
    assert set(fold["shared adapter"]["by_step"]) == {"1"}  # measured after step 1 of 2, and at the end
    assert "shared adapter: NDCG@10 / AUC gain over the prior along training" in table and "| end |" in table


def test_the_screen_measures_the_top_reranked_rows_and_refuses_a_typicality_part(tiny_run, tmp_path, monkeypatch):
    results = tmp_path / "rerank"
    arguments = ["--tokenizer_dir", str(tiny_run["tokenizer"]), "--corpus_dir", str(tiny_run["corpus"])]
    arguments += ["--pretraining_domains", "music", "films", "--held_out", "films", "--steps", "2", "--users", "10"]
    arguments += ["--negatives", "5", "--whitening_powers", "1", "--rerank_top", "3", "--results", str(results)]
    monkeypatch.setattr(sys, "argv", ["frame_invariant_screen", *arguments, "--parts", "axis weights, full softmax"])
    main()
    fold = json.loads(results.with_suffix(".json").read_text())["folds"]["films"]
    reranked = [
        "prior, top 3 re-ranked by axis weights, full softmax",
        "prior, top 3 re-ranked by the whitened prior, power 1",
    ]
    assert set(reranked) <= set(fold)
    monkeypatch.setattr(sys, "argv", ["frame_invariant_screen", *arguments, "--parts", "candidate typicality"])
    with pytest.raises(SystemExit):
        main()
