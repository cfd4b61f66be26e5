"""`equiprobe bench match` smoke test: an index built from a few corpus images by the session
server, deployed into a copy of its NAME_embed models, benchmarked on a few images. It checks
the command runs and prints every field; never how fast anything is."""

from __future__ import annotations

import json
import subprocess

from equiprobe.services.contract import ModelNames

from .conftest import ENCODER, copy_models, embed_bin


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([embed_bin(), *args], capture_output=True, text=True, timeout=timeout)


def test_bench_match_prints_every_figure(server, repo, tmp_path):
    proc = run_cli("index", "build", "--dataset", "corpus", "--encoder", ENCODER, "--url", server.config.grpc_url,
                   "--limit", "4", "--out", str(tmp_path / "ix"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench_repo = copy_models(repo, tmp_path / "repo", ModelNames(ENCODER).embed)
    proc = run_cli("bench", "match", "--repo", str(bench_repo))
    assert proc.returncode == 1 and "deploy --index" in proc.stdout + proc.stderr  # nothing deployed yet
    proc = run_cli("deploy", "--index", str(tmp_path / "ix"), "--repo", str(bench_repo), "--copy-threshold", "0.95")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("bench", "match", "--repo", str(bench_repo), "--index", str(tmp_path / "ix"), "--images", "4",
                   "--concurrency", "1", "--concurrency", "2", "--repeats", "1", "--memory-sizes", "500", "1000",
                   "--json", str(tmp_path / "bench.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    for field in ("matcher/embed", "ms added per image", "faiss search alone", "queries/s", "faiss alone (batch 1) / "
                  "matcher at 2 in flight", "EXTRAPOLATED", "GB per million", "ivfpq", "references.npy"):
        assert field in out, field
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["same_index_as_deployed"] and figures["count"] == 4 and figures["k"] == 4
    assert [r["level"] for r in figures["served"]] == [1, 2]
    assert [r["kind"] for r in figures["memory"]] == ["flat", "ivf", "ivfpq"]
    assert all(r["extrapolated"] and r["bytes_per_million_images"] > 0 for r in figures["memory"])
