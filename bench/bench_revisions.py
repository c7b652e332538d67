"""The workbench at two git revisions side by side: pp / tg tokens/s, interleaved in one run, with ratios.

    python bench/bench_revisions.py --base REV [--head REV] [--model PATH ...] [--threads N] [--repeat 7]

For a change that must not cost speed (a refactor, a new dispatch): each revision runs in a worker process of
its own (a git worktree under data/work/revisions/, imported through PYTHONPATH), which loads the model once;
the two workers then alternate, run by run, so drift of the machine hits both alike. --head defaults to the
working tree. Prints the median tokens/s of each side and head/base, plus the spread (min..max) of each.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workbench.assets import data_dir, ensure_model  # noqa: E402
from workbench.eval.bench import default_threads, prompt_tokens  # noqa: E402

# the worker: the revision's own WorkbenchRunner (pp / tg timed as bench_generate.py times them)
WORKER = r"""
import json, sys
from workbench.eval.bench import WorkbenchRunner
runner = WorkbenchRunner(sys.argv[1], int(sys.argv[2]))
for line in sys.stdin:
    kind, toks = json.loads(line)
    print(getattr(runner, kind)(toks), flush=True)
"""


def worktree(rev: str) -> Path:
    sha = subprocess.check_output(["git", "-C", str(REPO), "rev-parse", rev], text=True).strip()
    path = data_dir() / "work" / "revisions" / sha[:12]
    if not (path / "workbench").is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.check_call(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), sha],
                              stdout=subprocess.DEVNULL)
    return path


class Worker:
    def __init__(self, tree: Path, model, threads: int):
        env = dict(os.environ, PYTHONPATH=str(tree))
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(model), str(threads)], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, kind: str, toks) -> float:
        self.proc.stdin.write(json.dumps([kind, toks]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with {self.proc.wait()}")
        return float(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--head", help="git revision (default: the working tree)")
    ap.add_argument("--model", action="append", help="GGUF (repeatable; default: the default SmolLM2 model)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=64)
    args = ap.parse_args()
    trees = {"base": worktree(args.base), "head": worktree(args.head) if args.head else REPO}
    rows = []
    for model in [Path(m).resolve() for m in args.model] if args.model else [ensure_model()]:
        workers = {k: Worker(t, model, args.threads) for k, t in trees.items()}
        toks = prompt_tokens(args.n_prompt, 49152)
        try:
            for kind, arg in (("pp", toks), ("tg", toks[:args.n_gen + 1])):
                for w in workers.values():          # warm-up (compilation, caches)
                    w.run(kind, arg)
                runs = {k: [] for k in workers}
                for _ in range(args.repeat):
                    for k, w in workers.items():
                        runs[k].append(w.run(kind, arg))
                med = {k: statistics.median(v) for k, v in runs.items()}
                rows.append((Path(model).name, kind, med, runs))
                print(f"{Path(model).name:40s} {kind}  base {med['base']:8.1f} ({min(runs['base']):.1f}.."
                      f"{max(runs['base']):.1f})  head {med['head']:8.1f} ({min(runs['head']):.1f}.."
                      f"{max(runs['head']):.1f})  head/base {med['head'] / med['base']:.3f}", flush=True)
        finally:
            for w in workers.values():
                w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
