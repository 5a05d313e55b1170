"""The benchmark command runs every section end to end (at its quick sizes) and writes its files; no timing is
asserted, only that each figure is there and is a positive number."""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_the_benchmark_command_writes_every_section(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text, results = output.read_text(), json.loads(output.with_suffix(".json").read_text())
    for heading in (
        "Pretraining against the machine's peak",
        "Recommendation per request",
        "Item indexing",
        "How costs grow",
    ):
        assert f"## {heading}" in text
    assert results["training"]["peak"]["gflops"] > 0 and all(row["mfu"] > 0 for row in results["training"]["steps"])
    assert [row["batch"] for row in results["recommendation"]["beam_search"]] == [1, 16]
    assert all(row["ratio"] > 0 for row in results["recommendation"]["beam_search"])
    assert 0 < results["recommendation"]["pipeline"]["p50"] <= results["recommendation"]["pipeline"]["p95"]
    assert all(
        section["peak_rss_gb"] > 0 for section in (results[name] for name in ("training", "indexing", "scaling"))
    )
    assert (tmp_path / "BENCHMARKS_scaling.svg").read_text().lstrip().startswith("<?xml")
