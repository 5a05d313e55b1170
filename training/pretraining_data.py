"""What pretraining reads: token windows of users' histories, length-grouped batches and the collator.

A user's training history becomes ``<bos>`` and its items' concept tokens, cut into windows of at most
``max_history_items`` items (``training_windows``); ``LengthGroupedSampler`` batches windows of similar length;
``PretrainingCollator`` pads them and adds what the recipe needs (relabelled codes, the dense head's sampled
negatives and content vectors).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from datasets import Dataset
from torch.utils.data import Sampler

from tokenization_recbase import RecBaseTokenizer, item_domain


def windows_from_end(history: list, size: int) -> list[list]:
    """``history`` cut from its end backwards into windows of at most ``size`` entries, each of 2 or more (so every
    entry but a lone first one is predicted once, and the most recent ones share a window)."""
    windows = [history[max(0, end - size) : end] for end in range(len(history), 1, -size)]
    return [window for window in windows if len(window) > 1]


def training_windows(
    tokenizer: RecBaseTokenizer, histories: list[list[str]], max_history_items: int, popularity_buckets: int = 0
) -> Dataset:
    """Histories of item keys -> token windows ``<bos> item ... item`` of at most ``max_history_items`` items.

    A long history is cut from its end backwards, so the most recent items are always in one window and
    every item is trained on once. Histories of one item teach nothing (no next item) and are skipped.
    Columns: ``input_ids``, ``domain`` (of the window's items) and, with ``popularity_buckets``, ``bucket_ids``
    (the bucket of the item each token belongs to, 0 for ``<bos>``).
    """
    rows: dict[str, list] = {"input_ids": [], "domain": [], "bucket_ids": []}
    for history in histories:
        for window in windows_from_end(history, max_history_items):
            rows["input_ids"].append(tokenizer.encode_history(window)["input_ids"])
            rows["domain"].append(item_domain(window[0]))
            if popularity_buckets:
                buckets = tokenizer.popularity_buckets(window, popularity_buckets).tolist()
                rows["bucket_ids"].append([0] + [b for b in buckets for _ in range(tokenizer.tokens_per_item)])
    if not rows["input_ids"]:
        raise ValueError("no training sequence has two or more items")
    if not popularity_buckets:
        del rows["bucket_ids"]
    return Dataset.from_dict(rows)


class LengthGroupedSampler(Sampler[int]):
    """A shuffle that keeps windows of similar length in one batch, so little compute goes to padding.

    Indices are shuffled, cut into groups of ``batch_size * group_batches``, each group sorted by length and
    cut into batches, and the batches shuffled (a short last batch stays last, so batch boundaries hold). The
    order depends only on (seed, epoch): every process of a distributed run, and a resumed run, sees the same.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_batches: int = 50) -> None:
        self.lengths, self.batch_size, self.seed, self.group_batches = lengths, batch_size, seed, group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        group_size = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group_size):
            group = sorted(order[start : start + group_size], key=lambda index: -self.lengths[index])
            batches += [group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        last = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()] + last
        return iter([index for batch in shuffled for index in batch])


def collate_right_padded(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right padding: with causal attention no real token ever sees a pad, so no attention mask is needed
    (and the fast causal kernel is used). Labels are the inputs with pads ignored (-100); ``bucket_ids`` are
    padded with 0 when the windows have them."""
    width = max(len(example["input_ids"]) for example in batch)
    collated = {}
    for name, pad in (("input_ids", pad_token_id), ("bucket_ids", 0)):
        if name in batch[0]:
            collated[name] = torch.full((len(batch), width), pad, dtype=torch.long)
            for row, example in enumerate(batch):
                collated[name][row, : len(example[name])] = torch.tensor(example[name])
    collated["labels"] = collated["input_ids"].masked_fill(collated["input_ids"] == pad_token_id, -100)
    return collated


def relabel_codes(
    input_ids: torch.LongTensor, level_offsets: Sequence[int], level_sizes: Sequence[int], generator: torch.Generator
) -> tuple[torch.LongTensor, list[torch.LongTensor]]:
    """Identity-free training: one window's codes of each level mapped through a random permutation of that
    level's codes (fixed within the window). Which positions share a code, and so repeats and shared
    prefixes, is kept; what a code means in a domain is not, so only the window itself can tell what comes
    next, as in a domain never seen.

    input_ids (seq,) -> (relabelled (seq,), the permutation of each level: code k became permutation[k]).
    """
    relabelled = input_ids.clone()
    permutations = []
    for offset, size in zip(level_offsets, level_sizes):
        permutation = torch.randperm(size, generator=generator)
        in_level = (input_ids >= offset) & (input_ids < offset + size)
        relabelled[in_level] = offset + permutation[input_ids[in_level] - offset]
        permutations.append(permutation)
    return relabelled, permutations


class PretrainingCollator:
    """Right-padded batches (``collate_right_padded``), plus what the training recipe asks for:

    - ``relabel_share``: that share of windows is relabelled (``relabel_codes``); ``content_ids`` keep the
      true tokens, whose code vectors feed the content inputs and the dense head;
    - ``num_negatives``: for the dense head, that many items drawn uniformly from each window's domain
      (``negative_ids`` (batch, negatives, tokens_per_item) and their ``negative_vectors``, with
      ``negative_buckets`` given catalogue counts), and each window's ``item_vectors`` (batch, seq, latent):
      every item's content vector at the position of its last token (right padding: item j ends at
      ``(j + 1) * tokens_per_item``).
    """

    def __init__(
        self,
        tokenizer: RecBaseTokenizer,
        relabel_share: float = 0.0,
        num_negatives: int = 0,
        popularity_buckets: int = 0,
        seed: int = 0,
    ) -> None:
        self.pad_token_id, self.relabel_share, self.num_negatives = (
            tokenizer.pad_token_id,
            relabel_share,
            num_negatives,
        )
        self.level_sizes, self.level_offsets = tokenizer.layout.level_sizes, tokenizer.layout.level_offsets
        self.tokenizer = tokenizer
        self.domain_items: dict[str, torch.LongTensor] = {}
        self.domain_vectors: dict[str, torch.Tensor] = {}
        self.domain_buckets: dict[str, torch.LongTensor] = {}
        if num_negatives:
            for domain in sorted(tokenizer.domains):
                keys = tokenizer.domain_items(domain)
                self.domain_items[domain] = tokenizer.item_token_ids(keys)
                self.domain_vectors[domain] = tokenizer.item_vectors(keys)
                if popularity_buckets:
                    self.domain_buckets[domain] = tokenizer.popularity_buckets(keys, popularity_buckets)
        self.seed = seed

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        collated = collate_right_padded(batch, self.pad_token_id)
        # Random draws depend only on (seed, batch): a resumed run, which replays the same batches, draws the same.
        generator = torch.Generator().manual_seed(
            self.seed * 2**32 + zlib.crc32(collated["input_ids"].numpy().tobytes())
        )
        if self.relabel_share:
            collated["content_ids"] = collated["input_ids"]
            relabelled = collated["input_ids"].clone()
            chosen = torch.rand(len(batch), generator=generator) < self.relabel_share
            for row in chosen.nonzero().squeeze(-1).tolist():
                relabelled[row] = relabel_codes(relabelled[row], self.level_offsets, self.level_sizes, generator)[0]
            collated["input_ids"] = relabelled
            collated["labels"] = relabelled.masked_fill(collated["labels"] == -100, -100)
        if self.num_negatives:
            tokens_per_item = self.tokenizer.tokens_per_item
            negatives, vectors, buckets = [], [], []
            item_vectors = torch.zeros(
                *collated["input_ids"].shape, next(iter(self.domain_vectors.values())).shape[-1]
            )
            for row, example in enumerate(batch):
                keys = self.tokenizer.decode_items(example["input_ids"])
                item_vectors[row, tokens_per_item : tokens_per_item * (len(keys) + 1) : tokens_per_item] = (
                    self.tokenizer.item_vectors(keys)
                )
                items = self.domain_items[example["domain"]]
                drawn = torch.randint(len(items), (self.num_negatives,), generator=generator)
                negatives.append(items[drawn])
                vectors.append(self.domain_vectors[example["domain"]][drawn])
                if self.domain_buckets:
                    buckets.append(self.domain_buckets[example["domain"]][drawn])
            collated.update(
                item_vectors=item_vectors, negative_ids=torch.stack(negatives), negative_vectors=torch.stack(vectors)
            )
            if buckets:
                collated["negative_buckets"] = torch.stack(buckets)
        return collated
