"""Million-vector gallery: build, save, load and search with the project's own Gallery.

SPEC 7.3 promises that a gallery of a million embeddings builds, saves, loads and answers on one
machine. This script measures that on synthetic data (no model, no images) and, in the same
process and on the same queries, a numpy brute-force baseline (chunked matmul + argpartition),
so the headline is a ratio that does not depend on how busy the machine was. It also checks
that Faiss and numpy return the same top-k, and records the peak RSS after every stage.

Threads: faiss runs with its default OpenMP thread count (this script does NOT call
``prepare_environment``, which sets OMP_NUM_THREADS=1 for the CLIs); the thread counts that
faiss and numpy's BLAS actually use are written into the result.

    python bench/index_scale.py --n 1000000 --dim 512 --queries 1000 --k 20 --out scale.json
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.io import read_json, write_json_atomic

GIB = 1024**3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="gallery vectors")
    p.add_argument("--dim", type=int, default=512, help="embedding width")
    p.add_argument("--queries", type=int, default=1000, help="query vectors")
    p.add_argument("--k", type=int, default=20, help="neighbours per query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed searches per method")
    p.add_argument("--np_chunk", type=int, default=16384, help="gallery rows per numpy matmul")
    p.add_argument(
        "--faiss_threads",
        type=int,
        default=0,
        help="faiss OpenMP threads; 0 = faiss's default (the headline setting)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--tmpdir", default=None, help="where the gallery is saved (temp folder)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.faiss_threads < 0:
        p.error("--faiss_threads must be >= 0 (0 = faiss's default)")
    if min(args.n, args.dim, args.queries, args.k, args.repeats, args.np_chunk) < 1:
        p.error("--n, --dim, --queries, --k, --repeats and --np_chunk must be >= 1")
    if args.k > args.n:
        p.error(f"--k {args.k} is larger than --n {args.n}; ask for k <= n")
    return args


# ---------------------------------------------------------------------- measurement helpers
def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def rss_gib() -> float | None:
    """Current resident set size (Linux only; None elsewhere): shows what a stage released."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / GIB


class Stages:
    """Collects (stage, seconds, peak RSS, RSS, note) rows and prints progress as they end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, name: str, seconds: float, note: str = "") -> None:
        current = rss_gib()
        row = {
            "stage": name,
            "seconds": round(seconds, 3),
            "peak_rss_gib": round(peak_rss_gib(), 3),
            "rss_gib": None if current is None else round(current, 3),
            "note": note,
        }
        self.rows.append(row)
        print(f"  done: {name} in {seconds:.2f} s (peak RSS {row['peak_rss_gib']:.2f} GiB)")
        sys.stdout.flush()


def thread_settings(faiss_threads: int) -> dict:
    """Set faiss's OpenMP threads (0 = leave the default); report every pool in this process."""
    import faiss

    default = int(faiss.omp_get_max_threads())
    if faiss_threads:
        faiss.omp_set_num_threads(faiss_threads)
    info: dict = {
        "faiss_omp_threads_default": default,
        "faiss_omp_threads": int(faiss.omp_get_max_threads()),
        "cpu_count": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        info["pools"] = "threadpoolctl not installed"
        return info
    info["pools"] = [
        {
            "lib": Path(pool["filepath"]).name,
            "api": pool["internal_api"],
            "threads": pool["num_threads"],
            "version": pool.get("version"),
        }
        for pool in threadpool_info()
    ]
    return info


# ---------------------------------------------------------------------- data
def _normalize_rows(x: np.ndarray) -> None:
    """L2-normalise (rows, D) float32 in place."""
    x /= np.linalg.norm(x, axis=1, keepdims=True)


def make_data(
    *, n: int, dim: int, queries: int, seed: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors and perturbed-row queries, generated chunk by chunk.

    About 100 members per cluster with member-member cosine ~0.67 (random pairs ~0), so the
    top-k are real neighbours, not near-ties. Returns gallery (N, D) float32 unit rows, queries
    (Q, D) float32 unit rows and source (Q,) int64: the gallery row each query perturbs.
    """
    rng = np.random.default_rng(seed)
    n_centres = max(1, n // 100)
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32)
    _normalize_rows(centres)
    sigma = np.float32(np.sqrt(0.5 / dim))  # noise norm ~0.71 against unit centres
    gallery = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = gallery[start:stop]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block *= sigma
        block += centres[rng.integers(0, n_centres, size=stop - start)]
        _normalize_rows(block)
    source = rng.choice(n, size=queries, replace=queries > n).astype(np.int64)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q *= np.float32(np.sqrt(0.05 / dim))  # cosine to its source row ~0.98
    q += gallery[source]
    _normalize_rows(q)
    return gallery, q, source


# ---------------------------------------------------------------------- numpy baseline
def numpy_topk(
    gallery: np.ndarray, queries: np.ndarray, *, k: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product without Faiss: chunked BLAS matmul + argpartition merge.

    gallery: (N, D) float32, queries: (Q, D) float32. Returns scores (Q, k) float32 descending
    and row ids (Q, k) int64. One reusable (Q, chunk) score buffer keeps memory flat.
    """
    nq, n = queries.shape[0], gallery.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    buf = np.empty((nq, min(chunk, n)), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        s = buf[:, : stop - start]
        np.matmul(queries, gallery[start:stop].T, out=s)
        kk = min(k, stop - start)
        part = np.argpartition(s, s.shape[1] - kk, axis=1)[:, -kk:]
        cand_s = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        keep = np.argpartition(cand_s, cand_s.shape[1] - k, axis=1)[:, -k:]
        best_s = np.take_along_axis(cand_s, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def agreement(
    f_scores: np.ndarray, f_ids: np.ndarray, n_scores: np.ndarray, n_ids: np.ndarray
) -> dict:
    """How far Faiss and numpy top-k agree; score values decide, so ties cannot fail it.

    All inputs (Q, k), scores descending. Overlap is |ids_faiss & ids_numpy| / k per row.
    """
    k = f_ids.shape[1]
    overlap = np.array([np.intersect1d(a, b).size / k for a, b in zip(f_ids, n_ids, strict=True)])
    diff = np.abs(f_scores.astype(np.float64) - n_scores.astype(np.float64))
    result = {
        "max_abs_score_diff": float(diff.max()),
        "max_kth_score_diff": float(diff[:, -1].max()),
        "mean_overlap": float(overlap.mean()),
        "min_overlap": float(overlap.min()),
    }
    result["ok"] = result["max_kth_score_diff"] <= 1e-5 and result["mean_overlap"] >= 0.99
    return result


# ---------------------------------------------------------------------- the stages
def build_and_save(
    args: argparse.Namespace, gallery_vecs: np.ndarray, stages: Stages, root: Path
) -> tuple[Path, dict[str, int], bool | None]:
    """Gallery.build then Gallery.save into ``root``; returns (folder, file sizes, use_gpu)."""
    from retrieval.serving.gallery import Gallery

    use_gpu = {"auto": None, "cpu": False, "gpu": True}[args.device]
    rng = np.random.default_rng(args.seed + 1)
    n_classes = max(1, args.n // 50)
    t = time.perf_counter()
    labels = rng.integers(0, n_classes, size=args.n, dtype=np.int64)
    paths = [f"img_{i}.jpg" for i in range(args.n)]
    names = [f"class_{c}" for c in range(n_classes)]
    stages.record("labels + paths lists", time.perf_counter() - t, f"{n_classes} classes")

    print(f"Gallery.build: {args.n} x {args.dim} ...", flush=True)
    t = time.perf_counter()
    gal = Gallery.build(
        gallery_vecs, labels, paths, class_names=names, fingerprint="bench", use_gpu=use_gpu
    )
    stages.record("Gallery.build", time.perf_counter() - t, f"use_gpu={gal.index.use_gpu}")
    del labels, paths

    print(f"Gallery.save to {root} ...", flush=True)
    t = time.perf_counter()
    folder = gal.save(root)
    seconds = time.perf_counter() - t
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    stages.record("Gallery.save", seconds, f"{sum(sizes.values()) / 1e6:.1f} MB on disk")
    del gal  # the loaded copy is what gets searched: frees the built index first
    return folder, sizes, use_gpu


def paths_json_cost(folder: Path, stages: Stages) -> dict:
    """Time the paths_by_id JSON part of save/load on its own (same helpers Gallery uses)."""
    src = folder / "paths_by_id.json"
    t = time.perf_counter()
    paths = read_json(src)
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    write_json_atomic(folder.parent / "paths_copy.json", paths)
    write_s = time.perf_counter() - t
    (folder.parent / "paths_copy.json").unlink()
    stages.record("paths_by_id.json read+write alone", read_s + write_s, "part of save/load")
    return {"bytes": src.stat().st_size, "read_s": round(read_s, 3), "write_s": round(write_s, 3)}


def timed_searches(args, gal, gallery_vecs: np.ndarray, queries: np.ndarray, stages: Stages):
    """Interleaved Faiss (Gallery.search) and numpy searches, ``repeats`` times each."""
    f_times, n_times = [], []
    for r in range(args.repeats):
        print(f"search round {r + 1}/{args.repeats}: Gallery.search ...", flush=True)
        t = time.perf_counter()
        hits = gal.search(queries, args.k)
        f_times.append(time.perf_counter() - t)
        stages.record(f"Gallery.search #{r + 1}", f_times[-1], f"{args.queries} queries")
        print(f"search round {r + 1}/{args.repeats}: numpy brute force ...", flush=True)
        t = time.perf_counter()
        n_scores, n_ids = numpy_topk(gallery_vecs, queries, k=args.k, chunk=args.np_chunk)
        n_times.append(time.perf_counter() - t)
        stages.record(f"numpy brute force #{r + 1}", n_times[-1], f"chunk {args.np_chunk}")
    return hits, (n_scores, n_ids), f_times, n_times


def run(args: argparse.Namespace) -> dict:
    """All stages in order; returns the JSON-able result."""
    from retrieval.serving.gallery import Gallery

    stages = Stages()
    threads = thread_settings(args.faiss_threads)
    print(f"generating {args.n} x {args.dim} vectors + {args.queries} queries ...", flush=True)
    t = time.perf_counter()
    gallery_vecs, queries, source = make_data(
        n=args.n, dim=args.dim, queries=args.queries, seed=args.seed
    )
    stages.record("generate data", time.perf_counter() - t, f"{gallery_vecs.nbytes / GIB:.2f} GiB")
    with tempfile.TemporaryDirectory(prefix="index_scale_", dir=args.tmpdir) as tmp:
        root = Path(tmp) / "gallery"
        folder, sizes, use_gpu = build_and_save(args, gallery_vecs, stages, root)
        paths_json = paths_json_cost(folder, stages)
        print("Gallery.load ...", flush=True)
        t = time.perf_counter()
        gal = Gallery.load(root, use_gpu=use_gpu)
        stages.record("Gallery.load", time.perf_counter() - t, "warm page cache")
    assert gal.size == args.n and gal.paths_by_id[-1] == f"img_{args.n - 1}.jpg"
    hits, (n_scores, n_ids), f_times, n_times = timed_searches(
        args, gal, gallery_vecs, queries, stages
    )
    agree = agreement(hits.result.scores, hits.result.indices, n_scores, n_ids)
    f_best, n_best = min(f_times), min(n_times)
    f_med, n_med = statistics.median(f_times), statistics.median(n_times)
    return {
        "command": "python bench/index_scale.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "args": vars(args),
        "threads": threads,
        "stages": stages.rows,
        "files_bytes": sizes,
        "paths_json": paths_json,
        "search": {
            "faiss_s": [round(x, 3) for x in f_times],
            "numpy_s": [round(x, 3) for x in n_times],
            "faiss_queries_per_s_best": round(args.queries / f_best, 1),
            "time_ratio_faiss_over_numpy_best": round(f_best / n_best, 3),
            "time_ratio_faiss_over_numpy_median": round(f_med / n_med, 3),
            "numpy_over_faiss_best": round(n_best / f_best, 2),
            "top1_is_source_row": float((hits.result.indices[:, 0] == source).mean()),
        },
        "agreement": agree,
        "peak_rss_gib": round(peak_rss_gib(), 3),
    }


def print_report(res: dict) -> None:
    print()
    print(f"{'stage':<36} {'seconds':>9} {'peak RSS GiB':>13} {'RSS GiB':>8}  note")
    for row in res["stages"]:
        rss = "-" if row["rss_gib"] is None else f"{row['rss_gib']:.2f}"
        print(
            f"{row['stage']:<36} {row['seconds']:>9.2f} {row['peak_rss_gib']:>13.2f} "
            f"{rss:>8}  {row['note']}"
        )
    s, a, th = res["search"], res["agreement"], res["threads"]
    print(f"files: {res['files_bytes']}")
    print(
        f"threads: faiss OpenMP {th['faiss_omp_threads']} (default "
        f"{th['faiss_omp_threads_default']}); env {th['env']}; pools {th.get('pools')}"
    )
    print(
        f"faiss/numpy search time: {s['time_ratio_faiss_over_numpy_best']} (best of "
        f"{len(s['faiss_s'])}), {s['time_ratio_faiss_over_numpy_median']} (median); "
        f"< 1 means faiss is faster; faiss {s['faiss_queries_per_s_best']} queries/s"
    )
    print(
        f"agreement: kth-score diff {a['max_kth_score_diff']:.2e}, mean overlap "
        f"{a['mean_overlap']:.4f}, min overlap {a['min_overlap']:.2f} -> "
        f"{'OK' if a['ok'] else 'MISMATCH'}; top-1 = source row {s['top1_is_source_row']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    print_report(res)
    if args.out:
        write_json_atomic(Path(args.out), res)
        print(f"wrote {args.out}")
    return 0 if res["agreement"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
