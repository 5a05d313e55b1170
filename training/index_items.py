"""Index the items of new domains in a saved RecBase folder, with no training, and save it as a new folder.

    python -m training.index_items --checkpoint outputs/recbase-tiny --corpus_dir outputs/my-corpus \
        --domains my_movies --output_dir outputs/recbase-tiny-my-movies

Each item's fields become its unified text with the template saved in the tokenizer, are embedded (cached)
and get concept IDs from the frozen quantizer (``add_items``; a new domain is aligned on all its items at
once). The new folder is what the pipeline, ``training.evaluate`` (zero-shot) and ``training.adapt`` (LoRA)
take. ``--catalogue_counts True`` also gives each item its number of interactions in the corpus's training part
(the separate "catalogue counts" setting).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from training.arguments import parse_arguments
from training.corpus import load_corpus
from training.embedding import DEFAULT_CACHE_DIR, EmbeddingCache
from training.checkpoint import load_checkpoint, write_hub_folder


def index_items(checkpoint: str | Path, corpus_dir: str | Path, domains: list[str], output_dir: str | Path,
                catalogue_counts: bool = False, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Path:
    """Add every item of ``domains`` in the corpus that the checkpoint's tokenizer does not know; save the
    model and the tokenizer to ``output_dir`` (a pipeline folder). Returns ``output_dir``."""
    model, tokenizer = load_checkpoint(checkpoint)
    corpus = load_corpus(corpus_dir)
    cache = EmbeddingCache(tokenizer.text_encoder, cache_dir, max_length=tokenizer.text_max_length)
    for domain in domains:
        rows = corpus["items"].filter(lambda d: d == domain, input_columns="domain")
        if len(rows) == 0:
            raise ValueError(f"{corpus_dir}: no items of domain {domain!r}")
        rows = [row for row in rows if row["key"] not in tokenizer.item_codes]
        texts = [tokenizer.item_text_from_fields(row) for row in rows]
        counts = None
        if catalogue_counts:
            train = corpus["train"].filter(lambda d: d == domain, input_columns="domain")
            seen = Counter(key for items in train["items"] for key in items)
            counts = [seen[row["key"]] for row in rows]
        print(f"indexing {len(rows)} items of {domain}")
        tokenizer.add_items([row["key"] for row in rows], texts=texts, embeddings=cache.embed(texts), counts=counts)
    return write_hub_folder(model, tokenizer, output_dir)


@dataclass
class IndexArguments:
    checkpoint: str
    corpus_dir: str
    domains: list[str]
    output_dir: str
    catalogue_counts: bool = False
    cache_dir: str = str(DEFAULT_CACHE_DIR)


def main(argv: list[str] | None = None) -> Path:
    args = parse_arguments((IndexArguments,), argv, __doc__)
    return index_items(args.checkpoint, args.corpus_dir, args.domains, args.output_dir, args.catalogue_counts,
                       args.cache_dir)


if __name__ == "__main__":
    main()
