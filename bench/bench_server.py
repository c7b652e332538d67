"""Bounded loopback load test of the server: N requests from C concurrent clients, p50/p95 latency.

    python bench/bench_server.py [--model PATH] [--requests 200] [--clients 8] [--n-predict 8] [--constrained] [--json]

Starts the server in-process on a free 127.0.0.1 port (never another address), sends a fixed number of
/completion requests (bounded count and time), one client disconnecting mid-stream, and checks that none is
lost and none gets a 5xx. --constrained sends each request with a JSON schema (llama-server's `json_schema`)
and also counts the answers that are not valid JSON objects of that schema ("invalid").
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
    ap.add_argument("--constrained", action="store_true", help="requests with a JSON schema (grammar-constrained)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = workbench.load(ensure_model(args.model), n_ctx=512)
    engine = Engine(model, n_parallel=args.parallel)
    t_end = time.time() + args.timeout
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    with ServerThread(build_app(engine)) as url:
        def one(i):
            if time.time() > t_end:
                return None, 0.0, True
            t0 = time.perf_counter()
            body = {"prompt": f"Question {i}: what is {i} plus {i}?", "n_predict": args.n_predict, "seed": i}
            if args.constrained:
                body["json_schema"] = schema
            r = httpx.post(f"{url}/completion", json=body, timeout=args.timeout)
            return r.status_code, time.perf_counter() - t0, r.status_code != 200 or valid(r.json()["content"])

        def valid(text: str) -> bool:
            if not args.constrained:
                return True
            try:
                return isinstance(json.loads(text).get("answer"), int)
            except (ValueError, AttributeError):
                return False

        # one client disconnects mid-stream first
        with httpx.stream("POST", f"{url}/completion", json={"prompt": "Tell a long story", "n_predict": 256,
                                                             "stream": True}, timeout=60) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as ex:
            results = list(ex.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        free = engine.free_slots().qsize()
    codes = [c for c, _, _ in results]
    lat = sorted(t for c, t, _ in results if c == 200)
    row = {"requests": args.requests, "clients": args.clients, "slots": args.parallel,
           "ok": codes.count(200), "lost": codes.count(None), "http_5xx": sum(1 for c in codes if c and c >= 500),
           "http_4xx": sum(1 for c in codes if c and 400 <= c < 500),
           "invalid": sum(1 for _, _, ok in results if not ok), "slots_free_after": free,
           "p50_s": statistics.median(lat) if lat else None,
           "p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else None, "wall_s": wall,
           "requests_per_s": len(lat) / wall if wall else None}
    print(", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if args.json:
        print(json.dumps(row))
    return 0 if row["ok"] == args.requests and row["http_5xx"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
