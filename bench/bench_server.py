"""Bounded loopback load test of the server: N requests from C concurrent clients, p50/p95 latency.

    python bench/bench_server.py [--model PATH] [--requests 200] [--clients 8] [--n-predict 8] [--json]

Starts the server in-process on a free 127.0.0.1 port (never another address), sends a fixed number of
/completion requests (bounded count and time), one client disconnecting mid-stream, and checks that none is
lost and none gets a 5xx.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import workbench  # noqa: E402
from workbench.assets import ensure_model  # noqa: E402
from workbench.server import Engine, build_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_server import ServerThread  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--n-predict", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=600, help="overall time bound (s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = workbench.load(ensure_model(args.model), n_ctx=512)
    engine = Engine(model, n_parallel=args.parallel)
    t_end = time.time() + args.timeout
    with ServerThread(build_app(engine)) as url:
        def one(i):
            if time.time() > t_end:
                return None, 0.0
            t0 = time.perf_counter()
            r = httpx.post(f"{url}/completion", json={"prompt": f"Question {i}: what is {i} plus {i}?",
                                                      "n_predict": args.n_predict, "seed": i}, timeout=args.timeout)
            return r.status_code, time.perf_counter() - t0

        # one client disconnects mid-stream first
        with httpx.stream("POST", f"{url}/completion", json={"prompt": "Tell a long story", "n_predict": 256,
                                                             "stream": True}, timeout=60) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            results = list(ex.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        free = engine.free_slots().qsize()
    codes = [c for c, _ in results]
    lat = sorted(t for c, t in results if c == 200)
    row = {"requests": args.requests, "clients": args.clients, "slots": args.parallel,
           "ok": codes.count(200), "lost": codes.count(None), "http_5xx": sum(1 for c in codes if c and c >= 500),
           "http_4xx": sum(1 for c in codes if c and 400 <= c < 500), "slots_free_after": free,
           "p50_s": statistics.median(lat) if lat else None,
           "p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else None, "wall_s": wall,
           "requests_per_s": len(lat) / wall if wall else None}
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        print(json.dumps(row))
    return 0 if row["ok"] == args.requests and row["http_5xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
