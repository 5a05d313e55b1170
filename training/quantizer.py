"""Fitting the item quantizer: the paper's CL-VAE (an RQ-VAE trained with a coarse-to-fine curriculum).

- MLP encoder and mirrored decoder around residual vector quantization (``ResidualQuantizer``).
- Each level's codebook is k-means initialised on the residuals it will quantize, when the curriculum
  switches the level on (level 1 alone first, then levels 1-2, 1-3, ...).
- Codes left unused are re-initialised on residuals of random items every few epochs (against collapse).
- Loss: reconstruction MSE + codebook and commitment terms (weight 0.25), straight-through gradients.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tokenization_recbase import ResidualQuantizer


@dataclass
class QuantizerFitConfig:
    """How the CL-VAE is shaped and trained; the defaults are the paper's 4 levels x 1024 codes."""

    codebook_sizes: list[int] = field(default_factory=lambda: [1024, 1024, 1024, 1024])
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    latent_dim: int = 64
    epochs_per_level: int = 8  # curriculum: a new level is switched on every this many epochs
    final_epochs: int = 8  # epochs with every level on, after the curriculum
    batch_size: int = 512
    learning_rate: float = 1e-3
    commitment_weight: float = 0.25
    dead_code_every: int = 2  # epochs between re-initialisations of unused codes
    kmeans_iterations: int = 25
    seed: int = 0


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means: points (N, D) -> (k, D) centroids. With fewer than k distinct points, the spare
    centroids are jittered copies (they are re-initialised later if they stay dead)."""
    start = torch.randperm(points.shape[0], generator=generator)[:k]
    centroids = points[start].clone()
    if centroids.shape[0] < k:
        extra = points[torch.randint(points.shape[0], (k - centroids.shape[0],), generator=generator)]
        centroids = torch.cat([centroids, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(-1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(-1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def quantizer_loss(
    quantizer: ResidualQuantizer, batch: torch.Tensor, levels: int, commitment_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch (B, input_dim) -> (total loss, codes (B, levels)) with the first ``levels`` codebooks active."""
    latent = quantizer.encoder(batch)
    codes, residuals = quantizer.quantize(latent, levels)
    quantized = torch.zeros_like(latent)
    codebook_loss = latent.new_zeros(())
    for level, residual in enumerate(residuals):
        chosen = quantizer.codebooks[level][codes[:, level]]
        codebook_loss = codebook_loss + F.mse_loss(chosen, residual.detach()) \
            + commitment_weight * F.mse_loss(residual, chosen.detach())
        quantized = quantized + chosen
    # Straight-through: the decoder sees the quantized latent, gradients flow to the encoder unchanged.
    reconstruction = quantizer.decoder(latent + (quantized - latent).detach())
    return F.mse_loss(reconstruction, batch) + codebook_loss, codes


@torch.no_grad()
def _residuals_at(quantizer: ResidualQuantizer, embeddings: torch.Tensor, level: int) -> torch.Tensor:
    """(N, latent_dim) residuals entering ``level`` (0-based) for every item."""
    latent = quantizer.encoder(embeddings)
    if level == 0:
        return latent
    codes, residuals = quantizer.quantize(latent, level)
    return residuals[-1] - quantizer.codebooks[level - 1][codes[:, -1]]


def fit_quantizer(
    embeddings: torch.Tensor, config: QuantizerFitConfig, log=print
) -> tuple[ResidualQuantizer, list[dict]]:
    """Train the CL-VAE on (N, input_dim) embeddings; returns it (eval mode) and a per-epoch history."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    embeddings = embeddings.float()
    quantizer = ResidualQuantizer(embeddings.shape[1], config.hidden_dims, config.latent_dim, config.codebook_sizes)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=config.learning_rate)
    num_levels = len(config.codebook_sizes)
    total_epochs = num_levels * config.epochs_per_level + config.final_epochs
    history: list[dict] = []
    for epoch in range(total_epochs):
        levels = min(num_levels, epoch // config.epochs_per_level + 1)
        if epoch % config.epochs_per_level == 0 and epoch // config.epochs_per_level < num_levels:
            # A level is switched on: start its codebook at k-means centroids of the residuals it will see.
            residuals = _residuals_at(quantizer, embeddings, levels - 1)
            quantizer.codebooks[levels - 1].data.copy_(
                kmeans(residuals, config.codebook_sizes[levels - 1], config.kmeans_iterations, generator))
        quantizer.train()
        order = torch.randperm(embeddings.shape[0], generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            loss, _ = quantizer_loss(quantizer, embeddings[order[start : start + config.batch_size]], levels,
                                     config.commitment_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * min(config.batch_size, len(order) - start)
        reinitialised = 0
        if (epoch + 1) % config.dead_code_every == 0 and epoch + 1 < total_epochs:
            reinitialised = reinitialise_dead_codes(quantizer, embeddings, levels, generator)
        history.append({"epoch": epoch, "levels": levels, "loss": total / len(order), "reinitialised": reinitialised})
        log(f"quantizer epoch {epoch + 1}/{total_epochs} levels={levels} loss={total / len(order):.5f} "
            f"reinitialised={reinitialised}")
    return quantizer.eval(), history


@torch.no_grad()
def reinitialise_dead_codes(
    quantizer: ResidualQuantizer, embeddings: torch.Tensor, levels: int, generator: torch.Generator
) -> int:
    """Move every unused code of the active levels onto the residual of a random item; returns how many."""
    moved = 0
    for level in range(levels):
        residuals = _residuals_at(quantizer, embeddings, level)
        codebook = quantizer.codebooks[level]
        used = torch.bincount(torch.cdist(residuals, codebook).argmin(-1), minlength=codebook.shape[0]) > 0
        dead = (~used).nonzero().squeeze(-1)
        if len(dead):
            donors = torch.randint(residuals.shape[0], (len(dead),), generator=generator)
            codebook.data[dead] = residuals[donors] + 1e-4 * torch.randn(len(dead), residuals.shape[1], generator=generator)
            moved += len(dead)
    return moved


@torch.no_grad()
def reconstruction_error(quantizer: ResidualQuantizer, embeddings: torch.Tensor) -> dict[str, float]:
    """MSE of decoding the quantized latent, absolute and relative to the embeddings' variance."""
    latent = quantizer.encoder(embeddings.float())
    codes, _ = quantizer.quantize(latent)
    quantized = sum(quantizer.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))
    mse = F.mse_loss(quantizer.decoder(quantized), embeddings.float()).item()
    variance = embeddings.float().var(0).sum().item() / embeddings.shape[1]
    return {"mse": mse, "relative_mse": mse / variance}


def code_usage(codes: torch.Tensor, codebook_sizes: list[int]) -> list[dict[str, float]]:
    """Per level: codes used, the share of the codebook used, and the perplexity of the code distribution."""
    report = []
    for level, size in enumerate(codebook_sizes):
        counts = torch.bincount(codes[:, level], minlength=size).float()
        probabilities = counts[counts > 0] / counts.sum()
        entropy = -(probabilities * probabilities.log()).sum().item()
        report.append({"level": level + 1, "used": int((counts > 0).sum()), "size": size,
                       "usage": float((counts > 0).sum() / size), "perplexity": math.exp(entropy)})
    return report


def collision_rate(identifiers: list[tuple[int, ...]]) -> float:
    """Share of items whose identifier some other item also has."""
    counts = Counter(identifiers)
    return sum(1 for ident in identifiers if counts[ident] > 1) / max(len(identifiers), 1)


__all__ = ["QuantizerFitConfig", "fit_quantizer", "kmeans", "code_usage", "collision_rate", "reconstruction_error"]
