"""The corpus on disk: every domain's items and interactions, and their leave-one-out splits, as Parquet.

``build_corpus`` reads bundled domains (``training.bundled_domains``) and a user's own files
(``training.readers.read_generic``), computes the splits once (``training.splits``) and writes everything;
``load_corpus`` reads it back. ``python -m training.corpus`` is its command line.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, IterableDataset

from training.bundled_domains import BUNDLED_DOMAINS, DEFAULT_DATA_DIR, read_domain
from training.corpus_schema import CORPUS_FEATURES, CorpusError
from training.readers import read_generic
from training.splits import leave_one_out, to_sequences


@dataclass(frozen=True)
class OwnDomain:
    """A user's own domain for ``build_corpus``: files that ``read_generic`` reads, and what its items are."""

    interactions: str | Path
    items: str | Path
    item_type: str = "item"


def build_corpus(
    domains: list[str],
    out_dir: str | Path,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    own_domains: Mapping[str, OwnDomain] | None = None,
) -> Path:
    """Read the bundled ``domains`` and the user's ``own_domains`` (name -> files, see ``read_generic``);
    write them with their splits (``write_corpus``). All domains are read before anything is written.
    Returns ``out_dir``."""
    own_domains = dict(own_domains or {})
    names = list(domains) + list(own_domains)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"expected a non-empty list of distinct domains, got {names}")
    parts = [read_domain(name, data_dir) for name in domains]
    for name, own in own_domains.items():
        items, interactions = read_generic(own.interactions, own.items, name, own.item_type)
        if max(Counter(interactions["user_id"]).values()) < 3:
            raise CorpusError(
                f"{own.interactions}: no user has 3 or more interactions, so no user is left to evaluate (each "
                "user's last two items are held out for validation and test)"
            )
        parts.append((items, interactions))
    return write_corpus(
        datasets.concatenate_datasets([items for items, _ in parts]),
        datasets.concatenate_datasets([interactions for _, interactions in parts]),
        out_dir,
    )


def write_corpus(items: Dataset, interactions: Dataset, out_dir: str | Path) -> Path:
    """Write the two tables and their leave-one-out splits (``train``, ``validation``, ``test``; computed here,
    once) as ``<name>.parquet``. Each file goes to a temporary file in ``out_dir`` first and all are moved into
    place at the end, so a failure leaves earlier outputs intact. Returns ``out_dir``."""
    tables = {"items": items, "interactions": interactions, **leave_one_out(to_sequences(interactions))}
    return write_tables(tables, out_dir)


def write_tables(tables: Mapping[str, Dataset], out_dir: str | Path) -> Path:
    """Each table as ``<name>.parquet`` in ``out_dir``, staged in temporary files and moved into place together."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, table in tables.items():
            handle, temporary = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".parquet.tmp")
            os.close(handle)
            staged.append((Path(temporary), out_dir / f"{name}.parquet"))
            table.to_parquet(temporary)
        for temporary, final in staged:
            os.replace(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return out_dir


def sample_training_users(
    corpus_dir: str | Path, domain: str, fraction: float, out_dir: str | Path, seed: int = 0
) -> Path:
    """A corpus of ``domain`` alone in which a ``fraction`` of its users (sampled with ``seed``) keep their training
    and validation data and every user keeps the test split: what a method trained on the smaller log is
    measured on, on the same test users. The same arguments always give the same sample. Returns ``out_dir``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    corpus = load_corpus(corpus_dir)
    tables = {name: table.filter(lambda d: d == domain, input_columns="domain") for name, table in corpus.items()}
    users = sorted(set(tables["train"]["user_id"]))
    if not users:
        raise ValueError(f"{corpus_dir}: domain {domain!r} has no training users")
    kept = set(random.Random(seed).sample(users, max(1, round(fraction * len(users)))))
    for name in ("interactions", "train", "validation"):
        tables[name] = tables[name].filter(lambda user: user in kept, input_columns="user_id")
    return write_tables(tables, out_dir)


def load_corpus(out_dir: str | Path, streaming: bool = False) -> dict[str, Dataset | IterableDataset]:
    """Load what ``write_corpus`` wrote (streamed if asked): ``items``, ``interactions`` and the splits ``train``
    (each user's training items), ``validation`` and ``test`` (each user's history and held-out target)."""
    missing = [name for name in CORPUS_FEATURES if not (Path(out_dir) / f"{name}.parquet").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{out_dir}: {', '.join(f'{name}.parquet' for name in missing)} missing; a corpus "
            "folder is written by python -m training.corpus (rebuild one made before its splits "
            "were saved with it)"
        )
    return {
        name: datasets.load_dataset(
            "parquet",
            data_files=str(Path(out_dir) / f"{name}.parquet"),
            features=features,
            split="train",
            streaming=streaming,
        )
        for name, features in CORPUS_FEATURES.items()
    }


def main(argv: list[str] | None = None) -> Path:
    """``python -m training.corpus``: a corpus from bundled domains and your own files."""
    parser = argparse.ArgumentParser(
        description="""Build a corpus (items, interactions and their splits, as Parquet).

    python -m training.corpus --output_dir outputs/my-corpus \\
        --own my_movies data/examples/my_movies/interactions.csv data/examples/my_movies/items.csv movie

--own NAME INTERACTIONS ITEMS ITEM_TYPE adds your own domain: interactions (user_id, item_id, optional timestamp)
and items (item_id and any of title, categories, brand, description, year, price) as CSV, JSONL or Parquet.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--domains", nargs="*", default=[], help=f"bundled domains: {sorted(BUNDLED_DOMAINS)}")
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument(
        "--own", nargs=4, action="append", default=[], metavar=("NAME", "INTERACTIONS", "ITEMS", "ITEM_TYPE")
    )
    args = parser.parse_args(argv)
    own = {name: OwnDomain(interactions, items, item_type) for name, interactions, items, item_type in args.own}
    out_dir = build_corpus(args.domains, args.output_dir, args.data_dir, own)
    print(f"corpus of {args.domains + list(own)} written to {out_dir}")
    return out_dir


if __name__ == "__main__":
    main()
