"""The ``next-item-generation`` pipeline: a user's history of items in, ranked real items out.

    from transformers import pipeline
    recommend = pipeline("next-item-generation", model="./outputs/recbase-tiny", trust_remote_code=True)
    recommend({"history": ["amazon18_office/0", "amazon18_office/1"]}, top_k=5, domain="amazon18_office")
    recommend({"history": [{"text": 'Describe a movie:\\n{"title": "Alien"}'}]}, domain="ml-100k")
    recommend.score_candidates(["ml-100k/50"], ["ml-100k/172", "ml-100k/181"])

A history entry is an indexed item key (``"<domain>/<item_id>"``) or ``{"text": ...}`` for an item the
tokenizer has never seen: that item is indexed on the fly (the stored quantizer and the text encoder named
in the tokenizer's config), in ``domain`` or else the domain of the history's known items.

Every result is a real item and none repeats. With a dense head, every allowed item is scored by the cosine
between the predicted next-item content vector and its own; on the domains the model was trained on, the code
head's log-likelihood is added, with beam search constrained to real items' codes (``RecBaseItemConstraint``)
proposing candidates. ``score_candidates`` gives the same score for a given candidate list (the paper's setting).

Shipped beside the weights: imports only torch, transformers, the standard library and siblings.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .modeling_recbase import CACHE_FIELD, RecBaseItemConstraint

logger = logging.get_logger(__name__)

TASK = "next-item-generation"
SCORING_ROWS = 1024  # (user, candidate) rows scored at once by the code head: bounds score_candidates' memory


@torch.no_grad()
def rank_items(model, tokenizer, histories: Sequence[Sequence[str]], item_keys: Sequence[str], num_beams: int,
               max_history_items: int | None = None, exclude_history: bool = False) -> list[list[tuple[str, float]]]:
    """For each history, up to ``num_beams`` distinct items of ``item_keys``, best first, with their scores;
    with ``exclude_history``, never an item of that history.

    Without a dense head: constrained beam search, scored by the log-probability of the item's code tokens.
    With one: the dense head scores every allowed item; where the code head has no weight (``code_score_weight``
    0, or a domain outside ``code_score_domains``) that is the ranking, else the beam's items and the dense
    head's best ``rerank_candidates`` are re-scored by ``score_candidates``."""
    config = model.config
    if not config.dense_head:
        return _beam_search(model, tokenizer, histories, item_keys, num_beams, max_history_items, exclude_history)
    encoded = tokenizer.encode_history(list(histories), max_history_items=max_history_items, return_tensors="pt",
                                       return_item_vectors=True).to(model.device)
    queries = model(**encoded, use_cache=False, logits_to_keep=1, return_dense_queries=True).dense_queries[:, -1]
    buckets = (tokenizer.popularity_buckets(item_keys, config.popularity_buckets).to(model.device)
               if config.popularity_buckets else None)
    dense = model.dense_scores(queries, tokenizer.item_vectors(item_keys).to(model.device), buckets)  # (users, items)
    positions = {key: i for i, key in enumerate(item_keys)}
    if exclude_history:
        for row, history in enumerate(histories):
            dense[row, [positions[key] for key in set(history) if key in positions]] = float("-inf")
    if not any(config.code_score_weights(list(item_keys))):
        top = dense.topk(min(num_beams, len(item_keys)), dim=-1)
        return [[(item_keys[i], score) for i, score in zip(rows, values) if score != float("-inf")]
                for rows, values in zip(top.indices.tolist(), top.values.tolist())]
    # Re-score a shortlist per user: the beam's items (the code head's best), then the dense head's best.
    # Excluded items are -inf in ``dense`` (so last in its order); every shortlist has the same length, as
    # score_candidates needs.
    shortlist_size = min(config.rerank_candidates + num_beams, int((dense > float("-inf")).sum(-1).min()))
    beams = _beam_search(model, tokenizer, histories, item_keys, num_beams, max_history_items)
    shortlists = []
    for row, (beam, order) in enumerate(zip(beams, dense.argsort(dim=-1, descending=True)[:, :shortlist_size].tolist())):
        chosen = dict.fromkeys(key for key, _ in beam if dense[row, positions[key]] > float("-inf"))
        for position in order:
            if len(chosen) >= shortlist_size:
                break
            chosen.setdefault(item_keys[position])
        shortlists.append(list(chosen)[:shortlist_size])
    scores = score_candidates(model, tokenizer, histories, shortlists, max_history_items)
    return [sorted(zip(keys, row), key=lambda pair: -pair[1])[:num_beams] for keys, row in zip(shortlists, scores)]


def _beam_search(model, tokenizer, histories: Sequence[Sequence[str]], item_keys: Sequence[str], num_beams: int,
                 max_history_items: int | None = None, exclude_history: bool = False) -> list[list[tuple[str, float]]]:
    """Constrained beam search: up to ``num_beams`` distinct items of ``item_keys`` per history, best first,
    each with the log-probability of its code tokens. Histories are item keys, left-padded together. With
    ``exclude_history``, the search keeps as many more beams as the longest history has items to drop."""
    table = tokenizer.item_token_ids(item_keys)  # (items, tokens_per_item)
    allowed = set(item_keys)
    excluded = [set(history) & allowed if exclude_history else set() for history in histories]
    beams = min(num_beams + max(map(len, excluded)), len(item_keys))
    encoded = tokenizer.encode_history(list(histories), max_history_items=max_history_items, return_tensors="pt").to(model.device)
    prompt_length = encoded["input_ids"].shape[1]
    output = model.generate(
        **encoded, max_new_tokens=tokenizer.tokens_per_item, num_beams=beams, num_return_sequences=beams,
        do_sample=False, length_penalty=0.0,  # all items have the same length: the score is the summed log-prob
        output_scores=True, return_dict_in_generate=True,
        logits_processor=LogitsProcessorList([RecBaseItemConstraint(table, prompt_length, tokenizer.eos_token_id)]),
    )
    generated = output.sequences[:, prompt_length:].reshape(len(histories), beams, -1)
    scores = output.sequences_scores.reshape(len(histories), beams).tolist()
    special = len(tokenizer.all_special_ids)
    ranked = []
    for rows, row_scores, skip in zip(generated, scores, excluded):
        items: dict[str, float] = {}
        for row, score in zip(rows, row_scores):
            # A beam the constraint ran dry on (fewer valid items than beams) ends in special tokens: skip it.
            if score == float("-inf") or not bool((row >= special).all()):
                continue
            key = tokenizer.decode_items(row)[0]
            if key in allowed and key not in skip and key not in items:
                items[key] = score
        ranked.append(list(items.items())[:num_beams])
    return ranked


def _code_log_likelihood(last_logits: torch.Tensor, continuation_logits: torch.Tensor,
                         candidate_ids: torch.LongTensor) -> torch.Tensor:
    """Summed log-probability of each candidate's codes: the first is predicted by ``last_logits`` (N, vocab),
    each later one by the candidate's previous code, ``continuation_logits`` (N, tokens_per_item, vocab)."""
    logits = torch.cat([last_logits[:, None], continuation_logits[:, :-1]], 1)
    return logits.float().log_softmax(-1).gather(-1, candidate_ids.unsqueeze(-1)).squeeze(-1).sum(-1)


@torch.no_grad()
def empty_history_log_likelihood(model, candidate_ids: torch.LongTensor, bos_token_id: int) -> torch.Tensor:
    """(N, tokens_per_item) -> (N,): the log-probability of each item's codes after ``<bos>`` alone, the item's
    prior under the model (what pointwise-mutual-information scoring subtracts)."""
    bos = torch.full((len(candidate_ids), 1), bos_token_id, dtype=torch.long, device=candidate_ids.device)
    logits = model(torch.cat([bos, candidate_ids], 1), use_cache=False).logits  # (N, 1 + T, vocab)
    return _code_log_likelihood(logits[:, 0], logits[:, 1:], candidate_ids)


@torch.no_grad()
def score_candidates(model, tokenizer, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]],
                     max_history_items: int | None = None) -> list[list[float]]:
    """The score of each candidate after its history: (users, candidates per user).

    ``code_score_weight`` (for a domain of ``code_score_domains``) x the log-probability of the candidate's
    code tokens (minus its empty-history log-probability with ``calibrated_code_score``), plus, with a dense
    head, the cosine between the predicted and the candidate's content vector over ``dense_temperature``, less
    the mean of that cosine over the candidate's domain (a user's ranking is unchanged, users become
    comparable), plus its popularity bias given catalogue counts. The history runs once; its cache is then
    repeated for the candidates, ``SCORING_ROWS`` (user, candidate) rows at a time."""
    config = model.config
    per_user = len(candidates[0])
    if any(len(row) != per_user for row in candidates):
        raise ValueError("every history needs the same number of candidates")
    flat = [key for row in candidates for key in row]
    encoded = tokenizer.encode_history(list(histories), max_history_items=max_history_items, return_tensors="pt",
                                       return_item_vectors=config.dense_head).to(model.device)
    candidate_ids = tokenizer.item_token_ids(flat).to(model.device)  # (users * per_user, T)
    weights = torch.tensor(config.code_score_weights(flat), device=model.device)  # (users * per_user,)
    code_head = bool(weights.any())
    prefix = model(**encoded, use_cache=code_head, return_dense_queries=config.dense_head)
    scores = torch.zeros(len(histories), per_user, device=model.device)
    if code_head:
        # The history's cache is repeated for at most SCORING_ROWS (user, candidate) rows at a time, so memory
        # stays bounded whatever the number of candidates.
        history_cache = getattr(prefix, CACHE_FIELD)
        users, width = len(histories), max(1, SCORING_ROWS // len(histories))
        per_row = candidate_ids.view(users, per_user, -1)
        code = torch.empty(users, per_user, device=model.device)
        for start in range(0, per_user, width):
            ids = per_row[:, start : start + width].reshape(-1, per_row.shape[-1])  # (users * chunk, T)
            chunk = ids.shape[0] // users
            cache = copy.deepcopy(history_cache) if start + width < per_user else history_cache
            cache.batch_repeat_interleave(chunk)
            mask = torch.cat([encoded["attention_mask"].repeat_interleave(chunk, 0), torch.ones_like(ids)], 1)
            continuation = model(ids, attention_mask=mask, cache=cache)
            likelihood = _code_log_likelihood(prefix.logits[:, -1].repeat_interleave(chunk, 0), continuation.logits, ids)
            if config.calibrated_code_score:
                likelihood = likelihood - empty_history_log_likelihood(model, ids, tokenizer.bos_token_id)
            code[:, start : start + chunk] = likelihood.view(users, chunk)
            del cache, continuation  # free this chunk's repeated cache before the next one is made
        scores += weights.view(users, per_user) * code
    if config.dense_head:
        buckets = (tokenizer.popularity_buckets(flat, config.popularity_buckets).to(model.device).view(len(histories), per_user)
                   if config.popularity_buckets else None)
        vectors = tokenizer.item_vectors(flat).to(model.device).view(len(histories), per_user, -1)
        centres = tokenizer.domain_centres(flat).to(model.device).view(len(histories), per_user, -1)
        scores += model.dense_scores(prefix.dense_queries[:, -1], vectors, buckets, centres)
    return scores.tolist()


class NextItemGenerationPipeline(Pipeline):
    """History of items -> ranked ``{"item", "score", "text"}`` dicts (real, distinct items only).

    Call options: ``top_k`` (default 10), ``domain`` (rank only that domain's items; default: the history's
    domain, or its last item's when it mixes domains, with a warning), ``index_new_items`` (default False: items
    given by text or fields are indexed for the call only), ``exclude_history`` (default True: never recommend an item of the history), ``num_beams``
    (default ``max(top_k, 20)``).
    """

    _load_tokenizer = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_processor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # A tokenizer of another layout would only show up later as token ids outside the vocabulary.
        self.tokenizer.check_model_config(self.model.config, "pipeline")

    def _sanitize_parameters(self, top_k: int | None = None, domain: str | None = None,
                             exclude_history: bool | None = None, num_beams: int | None = None,
                             index_new_items: bool | None = None):
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        preprocess = {"domain": domain} if domain is not None else {}
        forward = {name: value for name, value in
                   (("top_k", top_k), ("exclude_history", exclude_history), ("num_beams", num_beams)) if value is not None}
        postprocess = {"index_new_items": index_new_items} if index_new_items is not None else {}
        return preprocess, forward, postprocess

    @property
    def max_history_items(self) -> int:
        """Items of a history the model reads: what it was trained to read (``config.max_history_items``), at most
        what its context holds with room for one more item."""
        per_item = self.tokenizer.tokens_per_item
        return min(self.model.config.max_history_items, (self.model.config.max_position_embeddings - 1) // per_item - 1)

    def resolve_history(self, history: Sequence[str | dict], domain: str | None = None) -> tuple[list[str], list[str]]:
        """Keys for every entry, and the keys indexed for it. Unseen items, given as ``{"text": ...}`` or as their
        fields (``{"title": ..., "categories": [...], "item_type": ...}``, written with the tokenizer's saved
        template), are indexed now, in ``domain`` or else the domain of the history's last known item; the
        caller forgets them afterwards unless asked to keep them (``index_new_items``)."""
        if not isinstance(history, (list, tuple)) or len(history) == 0:
            raise ValueError('the history must be a non-empty list of item keys or {"text": ...} dicts')
        known = [entry for entry in history if isinstance(entry, str)]
        for key in known:
            if key not in self.tokenizer.item_codes:
                raise ValueError(f"unknown item key {key!r}: not indexed by this tokenizer; pass "
                               '{"text": ...} for an item it has never seen')
        texts_of = {index: entry["text"] if "text" in entry else self.tokenizer.item_text_from_fields(entry)
                    for index, entry in enumerate(history) if isinstance(entry, dict)}
        texts = list(texts_of.values())
        if len(known) + len(texts) != len(history) or not all(isinstance(t, str) and t for t in texts):
            raise ValueError('history entries must be item keys (str), {"text": <non-empty str>} dicts or dicts of '
                             'item fields ({"title": ..., "categories": [...], "item_type": ...})')
        text_domain = domain or (known[-1].split("/", 1)[0] if known else None)
        if texts and text_domain is None:
            raise ValueError("a history of item texts alone needs domain=... to place the new items in")
        if texts and text_domain not in self.tokenizer.domains:
            # Only indexed items can be recommended, and a domain's frame is fitted on its whole catalogue.
            raise ValueError(f"domain {text_domain!r} has no indexed items, so there is nothing to recommend in it: index "
                             "its catalogue first (tokenizer.add_items(keys, texts) with all its items, or "
                             f"python -m training.index_items); indexed domains: {sorted(self.tokenizer.domains)}")
        new_keys = {text: f"{text_domain}/text-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}" for text in texts}
        missing = [text for text, key in new_keys.items() if key not in self.tokenizer.item_codes]
        if missing:
            self.tokenizer.add_items([new_keys[text] for text in missing], texts=missing)
        keys = [new_keys[texts_of[index]] if index in texts_of else entry for index, entry in enumerate(history)]
        return keys, [new_keys[text] for text in missing]

    def _truncate(self, history: list[str]) -> list[str]:
        """The most recent ``max_history_items`` items, with a warning when that drops some."""
        if len(history) > self.max_history_items:
            logger.warning(f"history of {len(history)} items is longer than the model reads "
                           f"({self.max_history_items} items): keeping the most recent {self.max_history_items}")
            return history[-self.max_history_items:]
        return history

    def _infer_domain(self, history: list[str]) -> str:
        """The history's domain; for a history of several domains, its last item's, with a warning."""
        domains = list(dict.fromkeys(key.split("/", 1)[0] for key in history))
        if len(domains) > 1:
            logger.warning(f"the history mixes domains {domains}: recommending items of {domains[-1]!r}, the last "
                           "item's domain; pass domain=... to choose")
        return domains[-1]

    def preprocess(self, inputs: dict, domain: str | None = None) -> dict:
        if not isinstance(inputs, dict) or "history" not in inputs:
            raise ValueError('the pipeline takes {"history": [...]} (or a list of such dicts for a batch)')
        history, added = self.resolve_history(inputs["history"], domain)
        history = self._truncate(history)
        return {"history": history, "domain": domain or self._infer_domain(history), "added": added}

    def _forward(self, model_inputs: dict, top_k: int = 10, exclude_history: bool = True,
                 num_beams: int | None = None) -> dict:
        """One history (its keys and domain), or a batch of them (lists of both) when ``batch_size`` > 1."""
        histories, domains = model_inputs["history"], model_inputs["domain"]
        batched = bool(histories) and not isinstance(histories[0], str)
        if not batched:
            histories, domains = [histories], [domains]
        ranked = []
        try:
            for history, domain in zip(histories, domains):
                items = self.tokenizer.domain_items(domain)
                available = len(set(items) - set(history)) if exclude_history else len(items)
                if top_k > available:
                    raise ValueError(f"top_k={top_k} but {available} items of domain {domain!r} can be recommended")
                ranked.append(rank_items(self.model, self.tokenizer, [history], items, max(num_beams or 20, top_k),
                                         exclude_history=exclude_history)[0][:top_k])
        except Exception:
            self.tokenizer.remove_items(model_inputs["added"])  # a failed call indexes nothing for good
            raise
        return {"ranked": ranked if batched else ranked[0], "added": model_inputs["added"]}

    def postprocess(self, model_outputs: dict, index_new_items: bool = False) -> list[dict]:
        rows = [{"item": key, "score": score, "text": self.tokenizer.item_text(key)} for key, score in model_outputs["ranked"]]
        if not index_new_items:
            self.tokenizer.remove_items(model_outputs["added"])
        return rows

    def score_candidates(self, history: Sequence[str | dict], candidates: Sequence[str],
                         domain: str | None = None, index_new_items: bool = False) -> list[dict]:
        """The paper's setting: ``{"item", "score", "text"}`` for each candidate, in the order given."""
        if not isinstance(candidates, (list, tuple)) or not candidates or not all(isinstance(key, str) for key in candidates):
            raise ValueError(f"candidates must be a non-empty list of item keys, got {candidates!r}")
        keys, added = self.resolve_history(history, domain)
        try:
            scores = score_candidates(self.model, self.tokenizer, [self._truncate(keys)], [list(candidates)])[0]
            return [{"item": key, "score": score, "text": self.tokenizer.item_text(key)}
                    for key, score in zip(candidates, scores)]
        finally:
            if not index_new_items:
                self.tokenizer.remove_items(added)


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NextItemGenerationPipeline, pt_model=AutoModelForCausalLM)
