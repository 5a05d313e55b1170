"""The sections of ``python -m benchmarks.run``, each run alone in a process: ``python -m benchmarks.sections NAME``
prints the section's results, with its peak resident memory, as one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections.abc import Callable

import torch

from modeling_recbase import (
    ItemRanker,
    NextItemGenerationPipeline,
    RankingPolicy,
    RecBaseConfig,
    RecBaseForCausalLM,
    constrained_beam_search,
)
from tokenization_recbase import (
    RecBaseTokenizer,
    ResidualQuantizer,
    TextEncoder,
    assign_unique_codes,
    item_indexing_recbase,
)

CODEBOOKS, DISAMBIGUATION = [256, 256, 256], 32  # the main job's vocabulary
VECTOR_SIZE = 384  # the text encoder's: the dense head's item vectors


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of two calls timed alternately, so machine noise falls on both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def matmul_gflops(
    m: int, k: int, n: int, repeats: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = median_seconds(lambda: (a @ b, sync()), repeats)
    return 2 * m * k * n / seconds / 1e9


def training(quick: bool) -> dict:
    """MFU of a full training step (forward, backward, AdamW) of recbase-small against the fp32 matmul peak."""
    size = 1024 if quick else 2048
    config = RecBaseConfig.from_preset("recbase-small", codebook_sizes=CODEBOOKS, disambiguation_size=DISAMBIGUATION)
    tokens = 64 * 29  # the main job's batches
    shapes = [
        (size, size, size),
        (tokens, config.hidden_size, config.intermediate_size),
        (tokens, config.hidden_size, config.vocab_size),
        (tokens, config.hidden_size, config.hidden_size),
    ]
    rates = {shape: matmul_gflops(*shape, 3 if quick else 7) for shape in shapes}
    # The peak is the fastest fp32 matmul measured here: a large square one, or the model's own shapes when faster.
    peak = max(rates.values())
    model = RecBaseForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    parameters = sum(p.numel() for p in model.parameters())  # the tied head counts once: it is a matmul too
    rows = []
    for batch, seq in ((64, 29), (16, 256)) if not quick else ((8, 29),):
        ids = torch.randint(3, config.vocab_size, (batch, seq))

        def step() -> None:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = median_seconds(step, 2 if quick else 5)
        flops_per_token = 6 * parameters + 12 * config.num_hidden_layers * config.hidden_size * seq
        gflops = flops_per_token * batch * seq / seconds / 1e9
        rows.append(
            {
                "shape": f"recbase-small, {batch} x {seq} tokens",
                "tokens_per_second": batch * seq / seconds,
                "gflops": gflops,
                "mfu": gflops / peak,
            }
        )
    matmuls = [
        {"shape": f"{m} x {k} x {n}", "gflops": rate, "share": rate / peak} for (m, k, n), rate in rates.items()
    ]
    result = {
        "peak": {"size": size, "gflops": peak},
        "steps": rows,
        "matmul_shapes": matmuls,
        "flops_formula": "6 x parameters (tied head included) + 12 x layers x hidden x sequence (attention), "
        "PaLM's count; AdamW's own work is not counted",
    }
    if torch.cuda.is_available():
        result["peak_bf16_gpu_gflops"] = matmul_gflops(8192, 8192, 8192, 5, torch.bfloat16, "cuda")
    best = max(row["mfu"] for row in rows)
    result["reading"] = (
        f"Best MFU {best:.0%} of the measured peak: missed. The rest of a step (attention softmax, norms, the "
        "optimizer, autograd bookkeeping) does no matmul work; the table above gives the matmul rate at the model's "
        "own shapes."
        if best < 0.3
        else f"Best MFU {best:.0%} of the measured peak: the 30% target is met. The rest is the part of a step that "
        "does no matmul work (attention softmax, norms, AdamW, autograd bookkeeping)."
    )
    return result


def synthetic_catalogue(items: int, other_items: int = 0, seed: int = 0) -> RecBaseTokenizer:
    """A tokenizer holding ``items`` items of ``shop`` and ``other_items`` of ``other``, with distinct random IDs and
    random content vectors (built in one pass: what indexing them would leave)."""
    generator = torch.Generator().manual_seed(seed)
    tokenizer = RecBaseTokenizer(codebook_sizes=CODEBOOKS, disambiguation_size=DISAMBIGUATION)
    total = items + other_items
    flat = torch.randperm(CODEBOOKS[0] * CODEBOOKS[1] * CODEBOOKS[2], generator=generator)[:total]
    codes = torch.stack([flat // 65536, flat // 256 % 256, flat % 256, torch.zeros_like(flat)], -1).tolist()
    keys = [f"other/{index}" for index in range(other_items)] + [f"shop/{index}" for index in range(items)]
    tokenizer.set_items(dict(zip(keys, codes)), {key: key for key in keys})
    tokenizer.set_item_vectors(dict(zip(keys, torch.randn(total, VECTOR_SIZE, generator=generator))))
    return tokenizer


def tiny_model(dense_head: bool) -> RecBaseForCausalLM:
    """A randomly initialised recbase-tiny: speed does not depend on what the weights learnt."""
    torch.manual_seed(0)
    config = RecBaseConfig.from_preset(
        "recbase-tiny",
        codebook_sizes=CODEBOOKS,
        disambiguation_size=DISAMBIGUATION,
        dense_head=dense_head,
        content_inputs=False,
        latent_dim=64 if dense_head else 0,
        item_vector_size=VECTOR_SIZE if dense_head else 0,
        popularity_buckets=0,
    )
    return RecBaseForCausalLM(config).eval()


@torch.no_grad()
def unconstrained(
    model: RecBaseForCausalLM, tokenizer: RecBaseTokenizer, histories: list[list[str]], beams: int
) -> None:
    """The same beam search as ``constrained_beam_search`` (length, beams, scores) without the item constraint."""
    encoded = tokenizer.encode_history(histories, return_tensors="pt")
    model.generate(
        **encoded,
        max_new_tokens=tokenizer.tokens_per_item,
        num_beams=beams,
        num_return_sequences=beams,
        do_sample=False,
        length_penalty=0.0,
        output_scores=True,
        return_dict_in_generate=True,
    )


def recommendation(quick: bool) -> dict:
    items = 2000 if quick else 10000
    repeats = 3 if quick else 9
    tokenizer, code_model = synthetic_catalogue(items), tiny_model(dense_head=False)
    keys = tokenizer.domain_items("shop")
    rows = []
    for batch in (1, 16):
        histories = [keys[user * 20 : (user + 1) * 20] for user in range(batch)]
        constrained_s, free_s = interleaved(
            lambda: constrained_beam_search(code_model, tokenizer, histories, keys, 10),
            lambda: unconstrained(code_model, tokenizer, histories, 10),
            repeats,
        )
        rows.append(
            {
                "items": items,
                "batch": batch,
                "constrained": constrained_s,
                "unconstrained": free_s,
                "ratio": constrained_s / free_s,
            }
        )
    dense_model = tiny_model(dense_head=True)
    both_heads = ItemRanker(dense_model, tokenizer, RankingPolicy(code_score_weight=1.0))  # the costlier scoring
    candidates = keys[:1000]
    scoring = median_seconds(lambda: both_heads.score([keys[-20:]], [candidates]), repeats)
    recommend = NextItemGenerationPipeline(model=dense_model, tokenizer=tokenizer)
    latencies = []
    for call in range(20 if quick else 50):
        start = time.perf_counter()
        recommend({"history": keys[call : call + 20]}, top_k=10)
        latencies.append(time.perf_counter() - start)
    latencies.sort()
    return {
        "beam_search": rows,
        "scoring": {"candidates": len(candidates), "candidates_per_second": len(candidates) / scoring},
        "pipeline": {
            "items": items,
            "calls": len(latencies),
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))],
        },
    }


def indexing(quick: bool) -> dict:
    texts = [
        f'Describe a product:\n{{"title": "product number {index}", "categories": ["group {index % 37}"]}}'
        for index in range(128 if quick else 1024)
    ]
    encoder = TextEncoder()
    embed = median_seconds(lambda: encoder.encode(texts), 1 if quick else 2)
    # The encoder against this machine's compute limit: the tokens it runs (padded per batch of 64, as encode pads,
    # after sorting by length), 2 FLOPs per weight outside the embeddings per token, against a large fp32 matmul.
    ordered = sorted(texts, key=len)
    batches = [
        encoder.tokenizer(
            ordered[start : start + 64],
            padding=True,
            truncation=True,
            max_length=encoder.max_length,
            return_tensors="pt",
        )["input_ids"]
        for start in range(0, len(ordered), 64)
    ]
    tokens = sum(batch.numel() for batch in batches)
    weights = sum(p.numel() for name, p in encoder.model.named_parameters() if "embeddings" not in name)
    achieved = 2 * weights * tokens / embed / 1e9
    peak = matmul_gflops(1024, 1024, 1024, 3 if quick else 5)
    quantizer = ResidualQuantizer(
        input_dim=VECTOR_SIZE, hidden_dims=[512, 256], latent_dim=64, codebook_sizes=CODEBOOKS
    ).eval()
    sizes = []
    for items in (1000, 10000) if quick else (1000, 10000, 40000):
        embeddings = torch.randn(items, VECTOR_SIZE, generator=torch.Generator().manual_seed(items))
        quantize = median_seconds(lambda: quantizer.encode_to_codes(embeddings), 1 if quick else 3)
        codes, distances = quantizer.encode_to_codes(embeddings)
        assign = median_seconds(
            lambda: assign_unique_codes(codes, distances, set(), DISAMBIGUATION), 1 if quick else 3
        )
        sizes.append({"items": items, "quantize": items / quantize, "assign": items / assign})
    return {
        "embed": {
            "texts": len(texts),
            "texts_per_second": len(texts) / embed,
            "tokens_per_text": tokens / len(texts),
            "gflops": achieved,
            "peak_gflops": peak,
        },
        "sizes": sizes,
    }


def scaling(quick: bool) -> dict:
    """Seconds per single-user request as the history and the catalogue grow."""
    repeats = 2 if quick else 5
    code_model, dense_model = tiny_model(dense_head=False), tiny_model(dense_head=True)
    tokenizer = synthetic_catalogue(10000 if quick else 40000)
    dense = ItemRanker(dense_model, tokenizer)

    def reading(length: int) -> ItemRanker:  # a dense ranker that reads the whole history
        return ItemRanker(dense_model, tokenizer, RankingPolicy(max_history_items=length))

    keys = tokenizer.domain_items("shop")
    history = {"beam search top-10 (code head)": [], "dense head ranking": []}
    for length in (5, 20, 80) if quick else (5, 20, 80, 250):
        user = [keys[-length:]]
        history["beam search top-10 (code head)"].append(
            (
                length,
                median_seconds(lambda: constrained_beam_search(code_model, tokenizer, user, keys[:2000], 10), repeats),
            )
        )
        history["dense head ranking"].append(
            (length, median_seconds(lambda: reading(length).rank(user, keys[:2000], 10), repeats))
        )
    catalogue = {"beam search top-10 (code head)": [], "dense head ranking": []}
    for size in (1000, 10000) if quick else (1000, 10000, 40000):
        user = [keys[-20:]]
        catalogue["beam search top-10 (code head)"].append(
            (
                size,
                median_seconds(lambda: constrained_beam_search(code_model, tokenizer, user, keys[:size], 10), repeats),
            )
        )
        catalogue["dense head ranking"].append(
            (size, median_seconds(lambda: dense.rank(user, keys[:size], 10), repeats))
        )
    return {"history": history, "catalogue": catalogue}


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))]}


def catalogue(quick: bool) -> dict:
    """Serving cost of one domain of 10k items while 0, 100k and 1M other items are indexed: pipeline top-10 and
    ``score_candidates`` at 1,000 candidates, each beside a plain numpy cosine top-10 over the same vectors; and the
    items file's save and load time."""
    import numpy

    items, calls = (2000, 20) if quick else (10000, 60)
    model = tiny_model(dense_head=True)
    rows = []
    for others in (0, 20000) if quick else (0, 100000, 1000000):
        tokenizer = synthetic_catalogue(items, others)
        keys = tokenizer.domain_items("shop")
        vectors = tokenizer.item_vectors(keys).numpy()
        unit = vectors / numpy.linalg.norm(vectors, axis=1, keepdims=True)  # an index built once, as numpy would

        def numpy_top10(history: list[str], matrix=unit) -> numpy.ndarray:
            query = vectors[[int(key.split("/")[1]) for key in history]].mean(0)
            scores = matrix @ (query / numpy.linalg.norm(query))
            top = numpy.argpartition(-scores, 10)[:10]
            return top[numpy.argsort(-scores[top])]

        recommend = NextItemGenerationPipeline(model=model, tokenizer=tokenizer)
        candidates = keys[-1000:]
        runs = {
            "pipeline": lambda history: recommend({"history": history}, top_k=10),
            "numpy": numpy_top10,
            "score": lambda history: recommend.score_candidates(history, candidates),
            "numpy_candidates": lambda history: numpy_top10(history, unit[-1000:]),
        }
        timings: dict[str, list[float]] = {name: [] for name in runs}
        # Blocks of calls, alternating: calling numpy (its BLAS threads spin on after each call) between two torch
        # calls slows torch several times over, which a server answering requests would not see.
        for block in range(3):
            for name, run in runs.items():
                for call in range(calls // 3 + 3):  # the first 3 of each block are warm-up
                    history = keys[(block * calls + call) * 7 % (items - 20) :][:20]
                    start = time.perf_counter()
                    run(history)
                    if call >= 3:
                        timings[name].append(time.perf_counter() - start)
        row = {"domain_items": items, "other_items": others, **{k: percentiles(v) for k, v in timings.items()}}
        if others == max((0, 20000) if quick else (0, 100000, 1000000)):
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                tokenizer.save_pretrained(folder)
                row["save_seconds"] = time.perf_counter() - start
                row["items_file_mb"] = os.path.getsize(os.path.join(folder, "items.safetensors")) / 1e6
                start = time.perf_counter()
                RecBaseTokenizer.from_pretrained(folder)
                row["load_seconds"] = time.perf_counter() - start
        rows.append(row)
    return {"rows": rows}


@torch.no_grad()
def spread_quantizer(sample: torch.Tensor) -> ResidualQuantizer:
    """A random encoder with codebooks fitted to ``sample``'s latents and residuals, level by level (a few k-means
    steps), so that items spread over the codes as a trained quantizer's do (random codebooks put them on a few
    prefixes, which then run out of IDs)."""
    torch.manual_seed(0)
    quantizer = ResidualQuantizer(
        input_dim=VECTOR_SIZE, hidden_dims=[512, 256], latent_dim=64, codebook_sizes=CODEBOOKS
    ).eval()
    residual = quantizer.encoder(sample)
    for codebook in quantizer.codebooks:
        codebook.copy_(residual[torch.randperm(len(residual))[: len(codebook)]])
        for _ in range(10):
            nearest = torch.cdist(residual, codebook).argmin(-1)
            counts = torch.bincount(nearest, minlength=len(codebook)).unsqueeze(-1)
            sums = torch.zeros_like(codebook).index_add_(0, nearest, residual)
            codebook.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), codebook))  # empty codes stay
        residual = residual - codebook[torch.cdist(residual, codebook).argmin(-1)]
    return quantizer


def large_indexing(quick: bool) -> dict:
    """``add_items`` of 100k items in one call, then 1M in chunks of 100k (embeddings given: the encoder's own rate
    is in the ``indexing`` section), with the time split between aligning, quantizing and assigning IDs, and the peak
    resident memory after each."""
    single, chunked, chunk = (10000, 40000, 10000) if quick else (100000, 1000000, 100000)
    generator = torch.Generator().manual_seed(0)
    quantizer = spread_quantizer(torch.randn(20000, VECTOR_SIZE, generator=generator))
    split: dict[str, float] = {}

    def timed(name: str, function: Callable) -> Callable:
        """``function``, adding its wall time to ``split[name]``: how add_items' time divides."""

        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                split[name] += time.perf_counter() - start

        return run

    item_indexing_recbase.align_by_domain = timed("align", item_indexing_recbase.align_by_domain)
    item_indexing_recbase.assign_unique_codes = timed("assign", item_indexing_recbase.assign_unique_codes)
    quantizer.encode_to_codes = timed("quantize", quantizer.encode_to_codes)
    results = []
    for total, size in ((single, single), (chunked, chunk)):
        tokenizer = RecBaseTokenizer(codebook_sizes=CODEBOOKS, disambiguation_size=DISAMBIGUATION)
        tokenizer.set_quantizer(quantizer, {})
        split.update(align=0.0, quantize=0.0, assign=0.0)
        started = time.perf_counter()
        for start in range(0, total, size):
            embeddings = torch.randn(size, VECTOR_SIZE, generator=generator)
            keys = [f"catalogue/{index}" for index in range(start, start + size)]
            tokenizer.add_items(keys, embeddings=embeddings)
        seconds = time.perf_counter() - started
        results.append(
            {
                "items": total,
                "per_call": size,
                "items_per_second": total / seconds,
                "seconds": {**split, "total": seconds, "rest": seconds - sum(split.values())},
                "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            }
        )
        del tokenizer
    return {"runs": results}


SECTIONS = {
    "training": training,
    "recommendation": recommendation,
    "indexing": indexing,
    "scaling": scaling,
    "catalogue": catalogue,
    "large_indexing": large_indexing,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("section", choices=list(SECTIONS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = SECTIONS[args.section](args.quick)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    print(json.dumps(result))


if __name__ == "__main__":
    main()
