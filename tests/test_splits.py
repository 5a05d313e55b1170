"""Sequences and leave-one-out splits, and their copy saved with the corpus."""

import pytest
from datasets import Dataset

from training.bundled_domains import BUNDLED_DOMAINS, DEFAULT_ZERO_SHOT_DOMAINS
from training.corpus_schema import EVALUATION_FEATURES, SEQUENCE_FEATURES
from training.splits import leave_one_out, split_domains


def test_leave_one_out():
    sequences = Dataset.from_dict(
        {
            "domain": ["d", "d", "d"],
            "user_id": ["long", "short", "three"],
            "items": [["d/a", "d/b", "d/c", "d/d"], ["d/x", "d/y"], ["d/p", "d/q", "d/r"]],
        },
        features=SEQUENCE_FEATURES,
    )
    before = sequences.to_list()
    splits = leave_one_out(sequences)
    assert sequences.to_list() == before
    assert splits["train"].features == SEQUENCE_FEATURES
    assert splits["validation"].features == EVALUATION_FEATURES
    assert splits["test"].features == EVALUATION_FEATURES
    assert splits["train"].to_list() == [
        {"domain": "d", "user_id": "long", "items": ["d/a", "d/b"]},
        {"domain": "d", "user_id": "short", "items": ["d/x", "d/y"]},
        {"domain": "d", "user_id": "three", "items": ["d/p"]},
    ]
    assert splits["validation"].to_list() == [
        {"domain": "d", "user_id": "long", "history": ["d/a", "d/b"], "target": "d/c"},
        {"domain": "d", "user_id": "three", "history": ["d/p"], "target": "d/q"},
    ]
    assert splits["test"].to_list() == [
        {"domain": "d", "user_id": "long", "history": ["d/a", "d/b", "d/c"], "target": "d/d"},
        {"domain": "d", "user_id": "three", "history": ["d/p", "d/q"], "target": "d/r"},
    ]


def test_split_domains():
    domains = list(BUNDLED_DOMAINS)
    pretraining, zero_shot = split_domains(domains, list(DEFAULT_ZERO_SHOT_DOMAINS))
    assert pretraining == [
        "amazon14_beauty",
        "yelp_p5",
        "amazon18_scientific",
        "microlens_50k",
        "xwines",
        "foursquare_nyc",
    ]
    assert zero_shot == ["amazon18_office", "ml-100k"]
    with pytest.raises(ValueError, match="netflix"):
        split_domains(domains, ["netflix"])
