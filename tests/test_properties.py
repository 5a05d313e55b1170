"""Property-based tests (hypothesis): inputs nobody thought of raise only the documented errors, and the item
tokenizer's round trips hold for any keys.

The documented error for bad input is ``ValueError`` (``CorpusError`` is one) with a message naming the
culprit; anything else (``TypeError``, ``KeyError``, ``IndexError``, ``RuntimeError``) is a bug.
"""

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from transformers import pipeline

from tokenization_recbase import RecBaseTokenizer

CODEBOOKS, DISAMBIGUATION = [4, 4, 4], 2
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Keys as users write them: any Unicode, "/" included, surrogates and control characters too.
domains = st.text(min_size=1, max_size=8).filter(lambda text: "/" not in text)
item_ids = st.text(min_size=1, max_size=8)
keys = st.builds(lambda domain, item: f"{domain}/{item}", domains, item_ids)
junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
)


def all_codes() -> list[tuple[int, ...]]:
    return [(a, b, c, z) for a in range(4) for b in range(4) for c in range(4) for z in range(DISAMBIGUATION)]


@SETTINGS
@given(st.lists(keys, min_size=1, max_size=12, unique=True), st.randoms(use_true_random=False))
def test_any_keys_round_trip_through_encode_history_and_decode_items(item_keys, rng):
    tokenizer = RecBaseTokenizer(codebook_sizes=CODEBOOKS, disambiguation_size=DISAMBIGUATION)
    codes = rng.sample(all_codes(), len(item_keys))
    tokenizer.set_items(dict(zip(item_keys, codes)), {key: key for key in item_keys})
    history = [rng.choice(item_keys) for _ in range(rng.randint(1, 10))]
    ids = tokenizer.encode_history(history)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 1 + len(history) * tokenizer.tokens_per_item
    assert tokenizer.decode_items(ids) == history
    assert tokenizer.decode_items(tokenizer.item_token_ids(history).reshape(-1)) == history
    text = tokenizer.decode(ids[1:])
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == ids[1:]  # the token strings round-trip too
    tokenizer.remove_items(item_keys)
    assert not tokenizer.item_codes


@SETTINGS
@given(st.lists(st.one_of(keys, junk), max_size=6), st.lists(st.integers(-3, 40), max_size=12), st.text(max_size=30))
def test_the_tokenizer_refuses_bad_input_with_value_errors_only(history, token_ids, text):
    tokenizer = RecBaseTokenizer(codebook_sizes=CODEBOOKS, disambiguation_size=DISAMBIGUATION)
    tokenizer.set_items({"shop/1": (0, 0, 0, 0), "shop/2": (1, 2, 3, 1)}, {"shop/1": "one", "shop/2": "two"})
    known = set(tokenizer.item_codes)
    checks = (  # (the call, what a result must satisfy)
        (lambda: tokenizer.encode_history(history), lambda out: tokenizer.decode_items(out["input_ids"]) == history),
        (lambda: tokenizer.decode_items(token_ids), lambda out: set(out) <= known),
        (lambda: tokenizer.tokenize(text), lambda out: all(isinstance(token, str) for token in out)),
        (
            lambda: tokenizer.item_token_ids(history),
            lambda out: out.shape == (len(history), tokenizer.tokens_per_item),
        ),
        (lambda: tokenizer.add_items(history, embeddings=torch.zeros(len(history), 384)), lambda out: False),
    )
    for call, holds in checks:
        try:
            result = call()
        except ValueError:
            continue
        assert holds(result), result  # add_items must refuse: this tokenizer has no quantizer


@SETTINGS
@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=6, unique=True), domains)
def test_any_texts_get_unique_ids_in_a_new_domain(tiny_run, texts, domain):
    tokenizer = RecBaseTokenizer.from_pretrained(tiny_run["tokenizer"])
    new_keys = [f"{domain}/{index}" for index in range(len(texts))]
    rows = torch.randn(len(texts), 384, generator=torch.Generator().manual_seed(len(texts)))
    try:
        codes = tokenizer.add_items(new_keys, texts=texts, embeddings=rows)
    except ValueError as error:  # a text that is not valid Unicode (a lone surrogate), a taken key, a blank text
        assert any(word in str(error) for word in ("Unicode", "empty text", "already indexed", "in use")), error
        return
    assert len(set(tokenizer.item_codes.values())) == len(tokenizer.item_codes)
    assert [tokenizer.item_text(key) for key in new_keys] == texts and set(codes) == set(new_keys)


history_entries = st.one_of(
    st.sampled_from(["music/1", "music/2", "films/3", "films/9"]),
    keys,
    junk,
    st.fixed_dictionaries({"text": st.one_of(st.text(max_size=20), junk)}),
    st.fixed_dictionaries({"title": st.text(max_size=20)}, optional={"item_type": st.text(max_size=8)}),
)


@pytest.fixture(scope="module")
def recommend(tiny_run):
    return pipeline("next-item-generation", model=str(tiny_run["checkpoint"]), trust_remote_code=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(st.lists(history_entries, max_size=5), junk),
    st.one_of(st.integers(-2, 30), junk),
    st.one_of(st.none(), st.sampled_from(["music", "films", "podcasts"]), junk),
)
@example(["music/1", {"title": "smoky jazz club"}], 3, None)  # the success path, whatever is drawn
def test_pipeline_inputs_give_real_items_or_a_value_error(recommend, history, top_k, domain):
    before = dict(recommend.tokenizer.item_codes)
    options = {"top_k": top_k} if top_k is not None else {}
    if domain is not None:
        options["domain"] = domain
    try:
        rows = recommend({"history": history}, **options)
    except ValueError:
        assert dict(recommend.tokenizer.item_codes) == before  # a refused call indexes nothing
        return
    wanted = top_k if top_k is not None else 10
    assert len(rows) == wanted and len({row["item"] for row in rows}) == wanted
    assert all(row["item"] in recommend.tokenizer.item_codes for row in rows)
    assert dict(recommend.tokenizer.item_codes) == before  # items given by text are kept for the call only


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(history_entries, max_size=4),
    st.one_of(st.lists(st.one_of(keys, junk, st.sampled_from(["music/4", "music/5", "films/6"])), max_size=5), junk),
)
@example(["music/1", {"text": "a new song"}], ["music/4", "films/6"])
def test_candidate_scoring_inputs_give_one_score_per_candidate_or_a_value_error(recommend, history, candidates):
    try:
        rows = recommend.score_candidates(history, candidates)
    except ValueError:
        return
    assert [row["item"] for row in rows] == list(candidates)
    assert all(isinstance(row["score"], float) for row in rows)


# Rows as users' own files hold them: fields missing, empty, of the wrong type, any Unicode, odd timestamps.
cells = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(-5, 10**12),
    st.floats(allow_nan=True),
    st.lists(st.text(max_size=5), max_size=3),
    st.booleans(),
)
item_rows = st.lists(
    st.dictionaries(st.sampled_from(["item_id", "title", "categories", "brand", "year", "junk"]), cells, max_size=5),
    max_size=6,
)
interaction_rows = st.lists(
    st.dictionaries(st.sampled_from(["user_id", "item_id", "timestamp", "junk"]), cells, max_size=4), max_size=10
)


def write_rows(path, rows: list[dict]) -> None:
    """JSON lines, or CSV with every column any row has (a CSV cell is text: lists and numbers become text)."""
    import csv
    import json

    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8", errors="surrogatepass")
        return
    columns = sorted({column for row in rows for column in row}) or ["item_id"]
    with path.open("w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(
            {column: "" if row.get(column) is None else row[column] for column in columns} for row in rows
        )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(item_rows, interaction_rows, st.sampled_from([".csv", ".jsonl"]))
@example(
    [{"item_id": 1, "title": "Alien", "categories": ["sf"]}, {"item_id": 2}],
    [{"user_id": "u", "item_id": 1, "timestamp": 5}, {"user_id": "u", "item_id": 2, "timestamp": 3}],
    ".csv",
)
def test_own_files_are_read_or_refused_with_the_file_and_line_named(tmp_path_factory, items, interactions, suffix):
    from training.corpus_schema import CorpusError
    from training.readers import read_generic

    folder = tmp_path_factory.mktemp("own")
    items_path, interactions_path = folder / f"items{suffix}", folder / f"interactions{suffix}"
    write_rows(items_path, items)
    write_rows(interactions_path, interactions)
    try:
        item_table, interaction_table = read_generic(interactions_path, items_path, "mine")
    except CorpusError as error:
        assert str(items_path) in str(error) or str(interactions_path) in str(error), error
        return
    item_ids = set(item_table["item_id"])
    assert len(item_ids) == len(item_table) and set(interaction_table["item_id"]) <= item_ids
    by_user: dict[str, list[int]] = {}
    for user, timestamp in zip(interaction_table["user_id"], interaction_table["timestamp"]):
        by_user.setdefault(user, []).append(timestamp)
    assert all(times == sorted(times) for times in by_user.values())
