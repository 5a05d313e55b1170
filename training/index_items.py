"""Index the items of new domains in a saved RecBase folder, with no training, and save it as a new folder.

    python -m training.index_items --checkpoint outputs/recbase-tiny --corpus_dir outputs/my-corpus \
        --domains my_movies --output_dir outputs/recbase-tiny-my-movies

Each item's fields become its unified text with the template saved in the tokenizer, are embedded (cached)
and get concept IDs from the frozen quantizer (``add_items``; a new domain is aligned on all its items at
once). The new folder is what the pipeline, ``training.evaluate`` (zero-shot) and ``training.adapt`` (LoRA)
take. ``--catalogue_counts True`` also gives each item its number of interactions in the corpus's training part
(the separate "catalogue counts" setting) and saves the counts' weight in the ranking policy, chosen on that
training part (``ItemRanker.fit_count_weight``). The source folder's model card, plots and run files are kept, and
``indexed_items.json`` records the domains indexed here, which ``training.export`` shows on the card.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from modeling_recbase import ItemRanker
from training.arguments import IndexArguments, parse_arguments
from training.checkpoint import INDEXED_ITEMS_FILE, load_checkpoint, write_hub_folder, write_json_atomically
from training.corpus import load_corpus


def index_items(args: IndexArguments) -> Path:
    """Add every item of ``args.domains`` in the corpus that the checkpoint's tokenizer does not know; save the
    model and the tokenizer to ``args.output_dir`` (a pipeline folder). Returns ``args.output_dir``."""
    model, tokenizer = load_checkpoint(args.checkpoint)
    source = Path(args.checkpoint)
    indexed: dict[str, int] = {}
    corpus = load_corpus(args.corpus_dir)
    for domain in args.domains:
        rows = corpus["items"].filter(lambda d: d == domain, input_columns="domain")
        if len(rows) == 0:
            raise ValueError(f"{args.corpus_dir}: no items of domain {domain!r}")
        new_rows = [row for row in rows if row["key"] not in tokenizer.item_codes]
        print(f"indexing {len(new_rows)} items of {domain} ({len(rows) - len(new_rows)} indexed already)")
        if new_rows:
            texts = [tokenizer.item_text_from_fields(row) for row in new_rows]
            tokenizer.add_items([row["key"] for row in new_rows], texts=texts, cache_dir=args.cache_dir)
        indexed[domain] = len(new_rows)
        if args.catalogue_counts:  # every item's count, and the counts' weight in the ranking, from the training part
            train = corpus["train"].filter(lambda d: d == domain, input_columns="domain")
            ranker = ItemRanker(model, tokenizer)
            ndcg = ranker.fit_count_weight(train["items"])
            model.ranking_policy = ranker.policy
            weight = ranker.policy.count_weights[domain]
            print(f"{domain}: weight {weight:g} of log(1 + count) (leave-last-out NDCG@10 {ndcg[weight]:.4f})")

    def keep_the_source_card(staging: Path) -> None:
        """The source's card and plots travel with it (its run files do through ``run_dir``), and
        ``indexed_items.json`` says what this folder adds (the card shows it when exported)."""
        for path in [source / "README.md", *source.glob("*.svg")]:
            if path.is_file():
                shutil.copy2(path, staging / path.name)
        trained, domains = source.resolve(), dict(indexed)
        if (source / INDEXED_ITEMS_FILE).is_file():  # indexed before: the record names the trained folder
            before = json.loads((source / INDEXED_ITEMS_FILE).read_text(encoding="utf-8"))
            trained, domains = (source.resolve().parent / before["source"]).resolve(), {**before["domains"], **indexed}
        record = {"source": os.path.relpath(trained, Path(args.output_dir).resolve().parent), "domains": domains}
        write_json_atomically(staging / INDEXED_ITEMS_FILE, record)

    return write_hub_folder(model, tokenizer, args.output_dir, run_dir=source, finish=keep_the_source_card)


def main(argv: list[str] | None = None) -> Path:
    args = parse_arguments((IndexArguments,), argv, __doc__)
    return index_items(args)


if __name__ == "__main__":
    main()
