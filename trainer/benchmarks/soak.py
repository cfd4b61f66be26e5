"""`equiprobe bench soak`: mixed good and bad uploads at a fixed concurrency for a bounded time.

Every good upload's embedding must equal the one it got when sent alone first (a wrong answer
under load counts as a failure, not only an error), every bad one must be refused with
INVALID_ARGUMENT. Reported: throughput per interval, outcomes, and the resident memory of the
server and of every python-backend stub at the start, after a warm-up under the full load
(batches, and so buffers, only reach their size under concurrency) and at the end; growth is
end against after-warm-up.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.clients.upload_corpus import EMBED, upload_corpus
from equiprobe.services.contract import EMBEDDING, IMAGE, ModelNames

from .harness import bench_server

# Outcomes: good requests embedded identically / failed; bad ones refused / anything else.
GOOD_OK, GOOD_FAILED, BAD_REFUSED, BAD_OTHER = "good_ok", "good_failed", "bad_refused", "bad_other"


@dataclass
class SoakReport:
    model: str
    concurrency: int
    seconds: float
    intervals: list[dict] = field(default_factory=list)  # {"end_s", outcome counts..., "good_per_s"}
    totals: dict[str, int] = field(default_factory=dict)
    warmup_s: float = 0.0
    rss_before_load_mb: dict[str, float] = field(default_factory=dict)
    rss_start_mb: dict[str, float] = field(default_factory=dict)  # after the warm-up under load
    rss_end_mb: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the first few, with their messages

    @property
    def rss_growth(self) -> float:
        start, end = sum(self.rss_start_mb.values()), sum(self.rss_end_mb.values())
        return end / start - 1 if start else 0.0

    @property
    def largest_process_growth(self) -> tuple[str, float]:
        """The process whose RSS grew most after the warm-up, and by how much."""
        growth = {n: self.rss_end_mb.get(n, 0.0) / mb - 1 for n, mb in self.rss_start_mb.items() if mb}
        name = max(growth, key=growth.get, default="")
        return name, growth.get(name, 0.0)

    def as_json(self) -> dict:
        return {**asdict(self), "rss_growth": self.rss_growth, "largest_process_growth": self.largest_process_growth}


def process_name(pid: int) -> str:
    """'tritonserver', or the model a python-backend stub serves (its second argument)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    if args and args[0].endswith(b"triton_python_backend_stub") and len(args) > 1:
        return Path(args[1].decode()).parent.parent.name + f" (stub {pid})"
    return Path(args[0].decode()).name + f" ({pid})"


def rss_mb(pids: list[int]) -> dict[str, float]:
    out = {}
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        out[process_name(pid)] = kb / 1024
    return out


def _send(client, model: str, data: bytes):
    array = np.frombuffer(data, np.uint8).reshape(1, -1)
    image = grpcclient.InferInput(IMAGE, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    return client.infer(model, [image], client_timeout=60).as_numpy(EMBEDDING)[0]


def run_soak(url: str, model: str, pids, minutes: float, concurrency: int = 16, interval_s: float = 10.0,
             warmup_s: float = 90.0, progress=None) -> SoakReport:
    """`pids()` lists the server's processes (server and stubs), read at start and end."""
    uploads = [u for u in upload_corpus() if len(u.data) < 16 << 20]
    warm = grpcclient.InferenceServerClient(url)
    expected = {}
    for i, upload in enumerate(uploads):  # warm-up: every code path once, and the reference answers
        try:
            expected[i] = _send(warm, model, upload.data)
        except InferenceServerException:
            expected[i] = None
    warm.close()
    report = SoakReport(model, concurrency, minutes * 60, warmup_s=warmup_s, rss_before_load_mb=rss_mb(pids()))
    counts, lock = Counter(), threading.Lock()
    start = time.monotonic()
    deadline = start + minutes * 60

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        client = grpcclient.InferenceServerClient(url)
        while time.monotonic() < deadline:
            i = int(rng.integers(len(uploads)))
            upload, want = uploads[i], expected[i]
            try:
                got = _send(client, model, upload.data)
                if upload.expected == EMBED:
                    ok = want is not None and np.allclose(got, want, rtol=1e-4, atol=1e-4)
                    outcome, why = (GOOD_OK, "") if ok else (GOOD_FAILED, "embedding differs from the warm-up's")
                else:
                    outcome, why = BAD_OTHER, "embedded"
            except InferenceServerException as exc:
                refused = exc.status() == "StatusCode.INVALID_ARGUMENT"
                if upload.expected == EMBED:
                    outcome, why = GOOD_FAILED, f"{exc.status()}: {exc.message()}"
                else:
                    outcome, why = (BAD_REFUSED, "") if refused else (BAD_OTHER, f"{exc.status()}: {exc.message()}")
            with lock:
                counts[outcome] += 1
                if why and len(report.failures) < 10:
                    report.failures.append(f"{upload.name}: {why}")
        client.close()

    threads = [threading.Thread(target=worker, args=(s,), daemon=True) for s in range(concurrency)]
    for t in threads:
        t.start()
    last, previous = start, Counter()
    while any(t.is_alive() for t in threads):
        next_stop = min(last + interval_s, deadline + 0.05)
        if not report.rss_start_mb:
            next_stop = min(next_stop, start + warmup_s)
        time.sleep(max(0.05, next_stop - time.monotonic()))
        now = time.monotonic()
        if not report.rss_start_mb and now >= start + warmup_s:
            report.rss_start_mb = rss_mb(pids())
        if now - last < interval_s and now < deadline:
            continue
        if now - last < interval_s / 2 and report.intervals:
            continue  # the sliver after the deadline: its counts are in the totals
        with lock:
            snapshot = Counter(counts)
        delta = snapshot - previous
        good = delta[GOOD_OK] + delta[GOOD_FAILED]
        row = {"end_s": round(now - start, 1), **{k: delta[k] for k in (GOOD_OK, GOOD_FAILED, BAD_REFUSED, BAD_OTHER)},
               "good_per_s": good / max(now - last, 1e-9), "requests_per_s": sum(delta.values()) / max(now - last, 1e-9)}
        row["rss_mb"] = rss_mb(pids())  # per process, to tell a plateau from a leak
        report.intervals.append(row)
        if progress:
            progress(row)
        last, previous = now, snapshot
    for t in threads:
        t.join()
    report.seconds = time.monotonic() - start
    report.totals = {k: counts[k] for k in (GOOD_OK, GOOD_FAILED, BAD_REFUSED, BAD_OTHER)}
    report.rss_end_mb = rss_mb(pids())
    report.rss_start_mb = report.rss_start_mb or report.rss_end_mb
    return report


def run_soak_bench(repo: Path, encoder: str, minutes: float, concurrency: int = 16, interval_s: float = 10.0,
                   warmup_s: float = 90.0, progress=None) -> SoakReport:
    """run_soak against NAME_embed on a loopback server over the bench repository (loopback only:
    a soak never leaves this machine)."""
    with bench_server(repo, encoder) as server:
        return run_soak(server.config.grpc_url, ModelNames(encoder).embed, server.group_pids, minutes, concurrency,
                        interval_s, warmup_s, progress)


def plot_soak(report: SoakReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    t = [r["end_s"] for r in report.intervals]
    left.plot(t, [r["requests_per_s"] for r in report.intervals], label="all requests/s")
    left.plot(t, [r["good_per_s"] for r in report.intervals], label="good uploads/s")
    left.set_xlabel("seconds")
    left.set_title(f"{report.model}, concurrency {report.concurrency}")
    left.legend()
    for name in sorted(report.rss_end_mb, key=lambda n: -report.rss_end_mb[n])[:6]:  # the largest processes
        right.plot(t, [r["rss_mb"].get(name, np.nan) for r in report.intervals], label=name)
    right.axvline(report.warmup_s, color="gray", linestyle=":", label="end of warm-up")
    right.set_xlabel("seconds")
    right.set_ylabel("RSS (MB)")
    right.set_title(f"RSS growth after warm-up {report.rss_growth:+.1%} (all processes)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
