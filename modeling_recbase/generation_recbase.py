"""Generation over concept IDs constrained to real items: the logits processor and the beam search that uses it.

Shipped beside the weights: imports only torch, transformers, the standard library and same-folder files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import BaseModelOutputWithPast

# transformers 5.24 renamed the cache argument and output field ``past_key_values`` to ``cache``; generate
# passes whichever name the installed version uses, so the model accepts both and fills the field it has.
CACHE_FIELD = (
    "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"
)


class RecBaseItemConstraint(LogitsProcessor):
    """Restricts generation to the code sequences of real items (vectorized prefix matching).

    Args:
        item_token_ids: (num_items, tokens_per_item) token ids of every allowed item.
        prompt_length: length of the (left-padded) prompt; generated tokens start after it.
        eos_token_id: the only token allowed once a whole item has been generated.
    """

    def __init__(self, item_token_ids: torch.LongTensor, prompt_length: int, eos_token_id: int) -> None:
        if item_token_ids.ndim != 2 or item_token_ids.shape[0] == 0:
            raise ValueError(
                f"item_token_ids must be a non-empty (num_items, tokens_per_item) tensor, "
                f"got shape {tuple(item_token_ids.shape)}"
            )
        self.item_token_ids = item_token_ids
        self.prompt_length = prompt_length
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (beams, prompt + step); scores (beams, vocab) -> scores with disallowed tokens at -inf."""
        codes = self.item_token_ids.to(input_ids.device)
        step = input_ids.shape[1] - self.prompt_length
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        if step >= codes.shape[1]:
            allowed[:, self.eos_token_id] = True
        else:
            prefix = input_ids[:, self.prompt_length :]  # (beams, step)
            matches = (codes[None, :, :step] == prefix[:, None, :]).all(-1)  # (beams, items)
            beam_index, item_index = matches.nonzero(as_tuple=True)
            allowed[beam_index, codes[item_index, step]] = True
        return scores.masked_fill(~allowed, float("-inf"))


@torch.no_grad()
def constrained_beam_search(
    model,
    tokenizer,
    histories: Sequence[Sequence[str]],
    item_keys: Sequence[str],
    num_beams: int,
    max_history_items: int | None = None,
    exclude_history: bool = False,
) -> list[list[tuple[str, float]]]:
    """Up to ``num_beams`` distinct items of ``item_keys`` per history, best first, each with the log-probability
    of its code tokens. Histories are item keys, left-padded together. With ``exclude_history``, the search keeps
    as many more beams as the longest history has items to drop."""
    table = tokenizer.item_token_ids(item_keys)  # (items, tokens_per_item)
    allowed = set(item_keys)
    excluded = [set(history) & allowed if exclude_history else set() for history in histories]
    beams = min(num_beams + max(map(len, excluded)), len(item_keys))
    encoded = tokenizer.encode_history(list(histories), max_history_items=max_history_items, return_tensors="pt")
    encoded = encoded.to(model.device)
    prompt_length = encoded["input_ids"].shape[1]
    output = model.generate(
        **encoded,
        max_new_tokens=tokenizer.tokens_per_item,
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        length_penalty=0.0,  # all items have the same length: the score is the summed log-prob
        output_scores=True,
        return_dict_in_generate=True,
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


__all__ = ["CACHE_FIELD", "RecBaseItemConstraint", "constrained_beam_search"]
