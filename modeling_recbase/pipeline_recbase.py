"""The ``next-item-generation`` pipeline: a user's history of items in, ranked real items out.

    from transformers import pipeline
    recommend = pipeline("next-item-generation", model="./outputs/recbase-tiny", trust_remote_code=True)
    recommend({"history": ["amazon18_office/0", "amazon18_office/1"]}, top_k=5, domain="amazon18_office")
    recommend({"history": [{"text": 'Describe a movie:\\n{"title": "Alien"}'}]}, domain="ml-100k")
    recommend.score_candidates(["ml-100k/50"], ["ml-100k/172", "ml-100k/181"])

A history entry is an indexed item key (``"<domain>/<item_id>"``) or ``{"text": ...}`` for an item the
tokenizer has never seen: that item is indexed on the fly (the stored quantizer and the text encoder named
in the tokenizer's config), in ``domain`` or else the domain of the history's known items.

Every result is a real item and none repeats. The model's ``ItemRanker`` ranks, with the ranking policy saved
beside the weights (``ranking_config.json``): by default the dense head alone scores every item of the domain.
``score_candidates`` gives the same score for a given candidate list (the paper's setting). Where the policy re-ranks
the prior's top items (``whitened_rerank_top``), their scores are their whitened prior scores plus 4 / temperature,
above every other item's.

Shipped beside the weights: imports only torch, transformers, the standard library and siblings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import weakref
from collections.abc import Sequence

from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.tokenization_utils_base import TOKENIZER_CONFIG_FILE
from transformers.utils import logging

from .hub_recbase import ADAPTER_CONFIG, TASK
from .ranking_recbase import RANKING_CONFIG_NAME, ItemRanker, RankingPolicy
from .vocabulary_recbase import item_domain, item_key

logger = logging.get_logger(__name__)
# One lock per tokenizer: calls that index items on the fly change its catalogue for their duration, so calls of
# every pipeline sharing that tokenizer take turns.
_CATALOGUE_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def catalogue_lock(tokenizer) -> threading.RLock:
    """The lock that guards ``tokenizer``'s catalogue during pipeline calls."""
    with _LOCKS_GUARD:
        if tokenizer not in _CATALOGUE_LOCKS:
            _CATALOGUE_LOCKS[tokenizer] = threading.RLock()
        return _CATALOGUE_LOCKS[tokenizer]


class NextItemGenerationPipeline(Pipeline):
    """History of items -> ranked ``{"item", "score", "text"}`` dicts (real, distinct items only).

    Call options: ``top_k`` (default 10), ``domain`` (rank only that domain's items; default: the history's
    domain, or its last item's when it mixes domains, with a warning), ``index_new_items`` (default False: items
    given by text or fields are indexed for the call only), ``exclude_history`` (default: the ranking policy's,
    True: never recommend an item of the history, however long; the model reads its most recent
    ``max_history_items``, and older text entries are not embedded), ``num_beams`` (default: the policy's, at least
    ``top_k``; used where the policy gives the code head weight).

    An item given by text or fields whose text is that of an indexed item of the domain is that item. Calls are safe
    from several threads (they take turns on the tokenizer's catalogue), and a call that fails, whatever its
    ``batch_size``, leaves no item indexed.
    """

    _load_tokenizer = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_processor = False
    _pipeline_calls_generate = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._use_the_adapter_folders_tokenizer()
        # A LoRA folder's ranking policy is saved beside its adapter and tokenizer; however its model was loaded
        # (the adapter on its base, AutoPeftModelForCausalLM, merged), that is the policy it ranks with.
        folder = str(self.tokenizer.name_or_path)
        self.lora_folder_policy = (
            RankingPolicy.from_pretrained(folder, self.model.config)
            if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG))
            and os.path.isfile(os.path.join(folder, RANKING_CONFIG_NAME))
            else None
        )
        # A tokenizer of another layout would only show up later as token ids outside the vocabulary.
        self.tokenizer.check_model_config(self.model.config, "pipeline")
        self.ranker.policy.check(self.model.config)
        self._indexed_by_call: list[str] = []  # items this call indexed on the fly (calls take turns)

    def _use_the_adapter_folders_tokenizer(self) -> None:
        """``pipeline(model=lora_folder)`` loads the tokenizer of the base model named in ``adapter_config.json``;
        the LoRA folder's own tokenizer (with the items it was adapted on) is the one its model ranks with."""
        folder = getattr(self.model, "adapter_folder", None)
        if folder is None or not os.path.isfile(os.path.join(folder, TOKENIZER_CONFIG_FILE)):
            return
        with open(os.path.join(folder, ADAPTER_CONFIG), encoding="utf-8") as handle:
            base = json.load(handle).get("base_model_name_or_path")
        if base is not None and str(self.tokenizer.name_or_path) == str(base):
            self.tokenizer = type(self.tokenizer).from_pretrained(folder)

    def __call__(self, inputs, *args, **kwargs):
        with catalogue_lock(self.tokenizer):
            return self._undo_on_failure(
                lambda: super(NextItemGenerationPipeline, self).__call__(inputs, *args, **kwargs)
            )

    def _undo_on_failure(self, call):
        """``call()``; if it raises, every item it indexed on the fly is forgotten first. Holds the catalogue lock."""
        self._indexed_by_call = []
        try:
            return call()
        except Exception:
            self.tokenizer.remove_items([key for key in self._indexed_by_call if key in self.tokenizer.item_codes])
            raise
        finally:
            self._indexed_by_call = []

    @property
    def ranker(self) -> ItemRanker:
        """The one ranking component, with the model's ranking policy as it is now (a LoRA folder's own, where the
        tokenizer comes from one)."""
        return ItemRanker(self.model, self.tokenizer, self.lora_folder_policy)

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        domain: str | None = None,
        exclude_history: bool | None = None,
        num_beams: int | None = None,
        index_new_items: bool | None = None,
    ):
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        preprocess = {"domain": domain} if domain is not None else {}
        forward = {
            name: value
            for name, value in (("top_k", top_k), ("exclude_history", exclude_history), ("num_beams", num_beams))
            if value is not None
        }
        postprocess = {"index_new_items": index_new_items} if index_new_items is not None else {}
        return preprocess, forward, postprocess

    @property
    def max_history_items(self) -> int:
        """Items of a history the model reads (``ItemRanker.max_history_items``)."""
        return self.ranker.max_history_items

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
                raise ValueError(
                    f"unknown item key {key!r}: not indexed by this tokenizer; pass "
                    '{"text": ...} for an item it has never seen'
                )
        # Entries older than what the model reads are not embedded: they would only be excluded from the results,
        # and an item never indexed is never recommended anyway.
        read_from = max(0, len(history) - self.max_history_items)
        texts_of = {
            index: entry["text"] if "text" in entry else self.tokenizer.item_text_from_fields(entry, check=True)
            for index, entry in enumerate(history)
            if isinstance(entry, dict) and index >= read_from
        }
        texts = list(texts_of.values())
        if not all(isinstance(entry, (str, dict)) for entry in history) or not all(
            isinstance(t, str) and t for t in texts
        ):
            raise ValueError(
                'history entries must be item keys (str), {"text": <non-empty str>} dicts or dicts of '
                'item fields ({"title": ..., "categories": [...], "item_type": ...})'
            )
        text_domain = domain or (item_domain(known[-1]) if known else None)
        if texts and text_domain is None:
            raise ValueError("a history of item texts alone needs domain=... to place the new items in")
        if texts and text_domain not in self.tokenizer.domains:
            # Only indexed items can be recommended, and a domain's frame is fitted on its whole catalogue.
            raise ValueError(
                f"domain {text_domain!r} has no indexed items, so there is nothing to recommend in it: index "
                "its catalogue first (tokenizer.add_items(keys, texts) with all its items, or "
                f"python -m training.index_items); indexed domains: {sorted(self.tokenizer.domains)}"
            )
        new_keys = {
            text: self.tokenizer.item_with_text(text_domain, text)
            or item_key(text_domain, f"text-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}")
            for text in texts
        }
        missing = [text for text, key in new_keys.items() if key not in self.tokenizer.item_codes]
        if missing:
            # A call's own texts are embedded in memory only: one disk shard per call would fill the cache folder.
            self.tokenizer.add_items([new_keys[text] for text in missing], texts=missing, cache_embeddings=False)
            self._indexed_by_call.extend(new_keys[text] for text in missing)
        keys = [
            new_keys[texts_of[index]] if index in texts_of else entry
            for index, entry in enumerate(history)
            if isinstance(entry, str) or index in texts_of
        ]
        return keys, [new_keys[text] for text in missing]

    def _warn_if_long(self, history: list) -> None:
        """A warning when the model reads only the most recent ``max_history_items`` of ``history`` (every item of
        it is still left out of the results with ``exclude_history``)."""
        if len(history) > self.max_history_items:
            logger.warning(
                f"history of {len(history)} items is longer than the model reads "
                f"({self.max_history_items} items): keeping the most recent {self.max_history_items}"
            )

    def _infer_domain(self, history: list[str]) -> str:
        """The history's domain; for a history of several domains, its last item's, with a warning."""
        domains = list(dict.fromkeys(item_domain(key) for key in history))
        if len(domains) > 1:
            logger.warning(
                f"the history mixes domains {domains}: recommending items of {domains[-1]!r}, the last "
                "item's domain; pass domain=... to choose"
            )
        return domains[-1]

    def preprocess(self, inputs: dict, domain: str | None = None) -> dict:
        if not isinstance(inputs, dict) or "history" not in inputs:
            raise ValueError('the pipeline takes {"history": [...]} (or a list of such dicts for a batch)')
        history, added = self.resolve_history(inputs["history"], domain)
        self._warn_if_long(inputs["history"])
        return {"history": history, "domain": domain or self._infer_domain(history), "added": added}

    def _forward(
        self, model_inputs: dict, top_k: int = 10, exclude_history: bool | None = None, num_beams: int | None = None
    ) -> dict:
        """One history (its keys and domain), or a batch of them (lists of both) when ``batch_size`` > 1."""
        histories, domains = model_inputs["history"], model_inputs["domain"]
        batched = bool(histories) and not isinstance(histories[0], str)
        if not batched:
            histories, domains = [histories], [domains]
        ranker = self.ranker
        if num_beams is not None:
            ranker = ItemRanker(self.model, self.tokenizer, dataclasses.replace(ranker.policy, num_beams=num_beams))
        exclude_history = ranker.policy.exclude_history if exclude_history is None else exclude_history
        ranked = []
        for history, domain in zip(histories, domains):
            items = self.tokenizer.domain_items(domain)
            in_domain = sum(item_domain(key) == domain for key in set(history))  # history keys are all indexed
            available = len(items) - in_domain if exclude_history else len(items)
            if top_k > available:
                raise ValueError(f"top_k={top_k} but {available} items of domain {domain!r} can be recommended")
            ranked.append(ranker.rank([history], items, top_k, exclude_history)[0])
        return {"ranked": ranked if batched else ranked[0], "added": model_inputs["added"]}

    def postprocess(self, model_outputs: dict, index_new_items: bool = False) -> list[dict]:
        rows = [
            {"item": key, "score": score, "text": self.tokenizer.item_text(key)}
            for key, score in model_outputs["ranked"]
        ]
        if not index_new_items:
            self.tokenizer.remove_items(model_outputs["added"])
        return rows

    def score_candidates(
        self,
        history: Sequence[str | dict],
        candidates: Sequence[str],
        domain: str | None = None,
        index_new_items: bool = False,
    ) -> list[dict]:
        """The paper's setting: ``{"item", "score", "text"}`` for each candidate, in the order given."""
        if (
            not isinstance(candidates, (list, tuple))
            or not candidates
            or not all(isinstance(key, str) for key in candidates)
        ):
            raise ValueError(f"candidates must be a non-empty list of item keys, got {candidates!r}")
        with catalogue_lock(self.tokenizer):
            return self._undo_on_failure(
                lambda: self._score_candidates(history, list(candidates), domain, index_new_items)
            )

    def _score_candidates(
        self, history: Sequence[str | dict], candidates: list[str], domain: str | None, index_new_items: bool
    ) -> list[dict]:
        keys, added = self.resolve_history(history, domain)
        self._warn_if_long(history)
        scores = self.ranker.score([keys], [candidates])[0]
        rows = [
            {"item": key, "score": score, "text": self.tokenizer.item_text(key)}
            for key, score in zip(candidates, scores)
        ]
        if not index_new_items:
            self.tokenizer.remove_items(added)
        return rows


PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NextItemGenerationPipeline, pt_model=AutoModelForCausalLM)
