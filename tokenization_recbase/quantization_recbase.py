"""RecBase's item quantization: the residual quantizer, domain alignment and unique IDs.

One place for what turns an item's text embedding into its concept ID, used both when the item tokenizer is
fitted (``training.fit_item_tokenizer``) and when it indexes new items (``RecBaseTokenizer.add_items``):

1. ``align_by_domain``: each domain's embeddings are centred and rotated onto its principal axes.
2. ``ResidualQuantizer.encode_to_codes``: one code per level, coarse to fine.
3. ``assign_unique_codes``: every item gets an ID no other item has.

Shipped beside the weights (with the tokenizer): imports only torch, transformers and the standard library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers.modeling_utils import safe_open, safe_save_file
from transformers.utils import logging

logger = logging.get_logger(__name__)

SMALL_NEW_DOMAIN = 64  # a new domain aligned on fewer items than this gets a warning: its frame is rough
TOO_FEW_TO_ALIGN = "a domain needs at least two distinct items to be aligned; index its items together"


class ResidualQuantizer(nn.Module):
    """RQ-VAE (the paper's CL-VAE without its training schedule): MLP encoder, residual codebooks, MLP decoder.

    Args:
        input_dim: size of the text embeddings.
        hidden_dims: encoder layer sizes (the decoder mirrors them).
        latent_dim: size of the quantized latent.
        codebook_sizes: codes per level, coarse to fine.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], latent_dim: int, codebook_sizes: Sequence[int]):
        super().__init__()
        self.config = {
            "input_dim": input_dim,
            "hidden_dims": list(hidden_dims),
            "latent_dim": latent_dim,
            "codebook_sizes": list(codebook_sizes),
        }
        encoder_dims = [input_dim, *hidden_dims, latent_dim]
        self.encoder = self._mlp(encoder_dims)
        self.decoder = self._mlp(encoder_dims[::-1])
        self.codebooks = nn.ParameterList(
            nn.Parameter(torch.randn(size, latent_dim) * 0.01) for size in codebook_sizes
        )

    @staticmethod
    def _mlp(dims: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                layers.append(nn.SiLU())
        return nn.Sequential(*layers)

    def quantize(self, latent: torch.Tensor, levels: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """latent (N, latent_dim) -> codes (N, levels) and the residual entering each level, each (N, latent_dim)."""
        residual = latent
        codes, residuals = [], []
        for codebook in self.codebooks[: levels or len(self.codebooks)]:
            residuals.append(residual)
            code = torch.cdist(residual, codebook).argmin(-1)  # (N,)
            codes.append(code)
            residual = residual - codebook[code]
        return torch.stack(codes, -1), residuals

    @torch.no_grad()
    def encode_to_codes(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeddings (N, input_dim) -> codes (N, levels) and last-level distances (N, codebook_sizes[-1])."""
        codes, residuals = self.quantize(self.encoder(embeddings.float()))
        return codes, torch.cdist(residuals[-1], self.codebooks[-1])


def fit_domain_alignment(embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Centre a domain's embeddings and rotate them onto the domain's principal axes.

    Text embeddings of different domains sit in different regions and vary along different directions, so a
    quantizer fitted on them spends its coarse codes on telling domains apart and a new domain falls on a
    few codes. The rotation is an isometry, so distances between a domain's items are unchanged; after it,
    every domain varies most along the first axes, and all of them share the coarse codes.

    Args:
        embeddings: (N, dim) embeddings of one domain's items, N >= 2.
    Returns:
        ``{"mean": (dim,), "rotation": (dim, dim)}``; ``align`` applies it.
    """
    distinct = torch.unique(embeddings.float(), dim=0)
    if distinct.shape[0] < 2:
        raise ValueError(TOO_FEW_TO_ALIGN)
    mean = distinct.mean(0)
    # The thin SVD's right factor is already (dim, dim) when N >= dim, and memory stays O(N dim); only a domain of
    # fewer items than dimensions needs the full one to complete its axes, and that one is small.
    few = distinct.shape[0] < distinct.shape[1]
    _, _, right = torch.linalg.svd(distinct - mean, full_matrices=few)  # rows: principal axes
    projected = (distinct - mean) @ right.T
    # An axis's sign is arbitrary: fix it so each axis has a positive third moment (deterministic).
    signs = torch.where((projected**3).sum(0) < 0, -1.0, 1.0)
    return {"mean": mean, "rotation": right.T * signs}


def align(embeddings: torch.Tensor, alignment: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, dim) embeddings -> (N, dim) in the shared frame of ``fit_domain_alignment``."""
    return (embeddings.float() - alignment["mean"]) @ alignment["rotation"]


def align_by_domain(
    embeddings: torch.Tensor, domains: Sequence[str], alignments: dict[str, dict[str, torch.Tensor]]
) -> torch.Tensor:
    """(N, dim) embeddings of items of ``domains`` (N names) -> (N, dim), each in its domain's frame.

    A domain without an alignment in ``alignments`` is aligned on its items here, and its alignment is added
    to ``alignments`` (in place): index a new domain with all its items at once for a good frame."""
    aligned = torch.empty(embeddings.shape)
    for domain in dict.fromkeys(domains):
        rows = [i for i, name in enumerate(domains) if name == domain]
        if domain not in alignments:
            if len(rows) < SMALL_NEW_DOMAIN:
                logger.warning(
                    f"aligning the new domain {domain!r} on only {len(rows)} items: index a new domain with all "
                    f"its items in one call for better IDs, or call tokenizer.refit_domain({domain!r}) once the "
                    "rest are indexed"
                )
            try:
                alignments[domain] = fit_domain_alignment(embeddings[rows])
            except ValueError as error:
                raise ValueError(f"new domain {domain!r}: {error}") from error
        aligned[rows] = align(embeddings[rows], alignments[domain])
    return aligned


def assign_unique_codes(
    codes: torch.Tensor, last_level_distances: torch.Tensor, taken: set[tuple[int, ...]], disambiguation_size: int
) -> list[tuple[int, ...]]:
    """Give every item an ID that no other item (new, or already in ``taken``) has.

    A balanced re-assignment at the last level first: items are served most-confident first, and each takes
    the nearest last-level code still free under its coarser codes (capacity: one item per code). Only when
    all of them are taken does an item share codes with others, told apart by the disambiguation code.

    Args:
        codes: (N, levels) quantizer codes.
        last_level_distances: (N, last codebook size) distances of each item to the last level's codes.
        taken: IDs already in use (with their disambiguation code when there is one); updated in place.
        disambiguation_size: number of disambiguation codes (0: no such level).
    Returns:
        N ID tuples: the ``levels`` codes, then the disambiguation code when ``disambiguation_size > 0``.
    """
    levels = codes.shape[1]
    occupants: dict[tuple[int, ...], set[int]] = {}  # level codes -> disambiguation codes in use
    for ident in taken:
        occupants.setdefault(ident[:levels], set()).add(ident[levels] if disambiguation_size else 0)
    capacity = max(disambiguation_size, 1)
    prefixes = [tuple(row) for row in codes[:, :-1].tolist()]
    nearest = codes[:, -1].tolist()
    result: list[tuple[int, ...]] = [()] * len(prefixes)
    for index in last_level_distances.min(-1).values.argsort().tolist():
        prefix, code = prefixes[index], nearest[index]
        if prefix + (code,) in occupants:  # only then rank all last-level codes for this item
            ranked = last_level_distances[index].argsort().tolist()
            code = next((c for c in ranked if prefix + (c,) not in occupants), None)
            if code is None:
                code = next((c for c in ranked if len(occupants[prefix + (c,)]) < capacity), None)
            if code is None:
                raise ValueError(
                    f"every ID under the codes {prefix} is in use: enlarge the last codebook or "
                    f"disambiguation_size (now {disambiguation_size})"
                )
        in_use = occupants.setdefault(prefix + (code,), set())
        extra = min(set(range(capacity)) - in_use)
        in_use.add(extra)
        result[index] = prefix + (code, extra) if disambiguation_size else prefix + (code,)
    taken.update(result)
    return result


QUANTIZER_FORMAT = "recbase-quantizer/1"


def save_quantizer(quantizer: ResidualQuantizer, path: str | os.PathLike) -> None:
    """The frozen quantizer's weights and config as one safetensors file (the domain alignments are saved with the
    items, since ``add_items`` changes them)."""
    state = {name: tensor.contiguous() for name, tensor in quantizer.state_dict().items()}
    # One metadata entry: safetensors writes several in an order that changes from process to process.
    metadata = {"recbase": json.dumps({"format": QUANTIZER_FORMAT, "config": quantizer.config})}
    safe_save_file(state, str(path), metadata=metadata)


def load_quantizer(path: str | os.PathLike) -> tuple[ResidualQuantizer, dict[str, dict[str, torch.Tensor]]]:
    """The frozen quantizer from ``save_quantizer``'s file (no alignments: ``{}``), or from a previous release's
    ``quantizer.pt`` (a ``torch.save`` of weights only, read without unpickling code) with its domain alignments."""
    try:
        if str(path).endswith(".safetensors"):
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {}).get("recbase", "{}"))
                if metadata.get("format") != QUANTIZER_FORMAT:
                    raise ValueError(f"format {metadata.get('format')!r}, expected {QUANTIZER_FORMAT!r}")
                state = {"config": metadata["config"], "domain_alignments": {}}
                state["state_dict"] = {name: handle.get_tensor(name) for name in handle.keys()}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        quantizer = ResidualQuantizer(**state["config"])
        quantizer.load_state_dict(state["state_dict"])
    except Exception as error:
        raise ValueError(f"{path}: not a RecBase quantizer file ({error})") from error
    return quantizer.eval(), state["domain_alignments"]


__all__ = [
    "ResidualQuantizer",
    "align",
    "align_by_domain",
    "assign_unique_codes",
    "fit_domain_alignment",
    "load_quantizer",
    "save_quantizer",
]
