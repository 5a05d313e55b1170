"""Sequences and leave-one-out splits, computed once by ``training.corpus.build_corpus`` and saved with the corpus.

``to_sequences`` derives one time-ordered row of item keys per (domain, user); ``leave_one_out`` splits those rows
into train, validation and test. Which domains are trained on and which are zero-shot is ``split_domains``.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from datasets import Dataset

from training.corpus_schema import EVALUATION_FEATURES, SEQUENCE_FEATURES, arrow_dataset, item_key


def split_domains(domains: list[str], zero_shot: list[str]) -> tuple[list[str], list[str]]:
    """Split ``domains`` into (pretraining, zero-shot) lists, both in the order of ``domains``.

    Zero-shot domains are never trained on; each must be one of ``domains``.
    """
    unknown = [name for name in zero_shot if name not in domains]
    if unknown:
        raise ValueError(f"zero-shot domains {unknown} are not among the domains {domains}")
    held_out = set(zero_shot)
    pretraining = [name for name in domains if name not in held_out]
    return pretraining, [name for name in domains if name in held_out]


def to_sequences(interactions: Dataset) -> Dataset:
    """One row per (domain, user): item keys in time order.

    Users keep the order of their first interaction; each user's items are stably sorted by
    timestamp, so ties keep the order of the interactions table.
    """
    columns = interactions.select_columns(["domain", "user_id", "item_id", "timestamp"]).to_dict()
    events: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for domain, user_id, item_id, timestamp in zip(
        columns["domain"], columns["user_id"], columns["item_id"], columns["timestamp"]
    ):
        events.setdefault((domain, user_id), []).append((timestamp, item_key(domain, item_id)))
    rows: dict[str, list[Any]] = {"domain": [], "user_id": [], "items": []}
    for (domain, user_id), user_events in events.items():
        rows["domain"].append(domain)
        rows["user_id"].append(user_id)
        rows["items"].append([key for _, key in sorted(user_events, key=itemgetter(0))])
    return arrow_dataset(rows, SEQUENCE_FEATURES)


def leave_one_out(sequences: Dataset) -> dict[str, Dataset]:
    """Leave-one-out split of sequences into "train", "validation" and "test".

    For a user with items ``s``: train has ``items = s[:-2]``; validation has ``history = s[:-2]``,
    ``target = s[-2]``; test has ``history = s[:-1]``, ``target = s[-1]``. Users with fewer than
    3 items appear in train only, with all their items, and in neither validation nor test.
    """
    columns = sequences.select_columns(["domain", "user_id", "items"]).to_dict()
    train: dict[str, list[Any]] = {"domain": [], "user_id": [], "items": []}
    validation: dict[str, list[Any]] = {"domain": [], "user_id": [], "history": [], "target": []}
    test: dict[str, list[Any]] = {"domain": [], "user_id": [], "history": [], "target": []}
    for domain, user_id, items in zip(columns["domain"], columns["user_id"], columns["items"]):
        if len(items) < 3:
            train["domain"].append(domain)
            train["user_id"].append(user_id)
            train["items"].append(items)
            continue
        for split, values in (
            (train, {"items": items[:-2]}),
            (validation, {"history": items[:-2], "target": items[-2]}),
            (test, {"history": items[:-1], "target": items[-1]}),
        ):
            split["domain"].append(domain)
            split["user_id"].append(user_id)
            for column, value in values.items():
                split[column].append(value)
    return {
        "train": arrow_dataset(train, SEQUENCE_FEATURES),
        "validation": arrow_dataset(validation, EVALUATION_FEATURES),
        "test": arrow_dataset(test, EVALUATION_FEATURES),
    }
