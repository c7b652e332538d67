"""The votes of the blind A/B arena (workbench.ui.arena_widget: one JSON line per vote) as a table: games,
wins / losses / ties per file, win rate with a Wilson interval, Bradley-Terry strength and Elo with bootstrap
intervals, the position bias (how often the left answer wins), and beside them what needs no human: the mean
KL divergence of each file's next-token distributions on the arena's own prompts and answers (llama-perplexity's
`--kl-divergence` per-token KLD, reused from workbench.eval.logprobs) and a task accuracy (workbench.eval.tasks).

    df = arena_summary("data/arena/votes.jsonl", models=[model_a, model_b], reference=f16_model)

Ties count as half a win everywhere (win rate, Bradley-Terry, Elo), as LMSYS's Chatbot Arena counts them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.eval import tasks as T
from workbench.eval.logprobs import encode_log_probs, kld_rows
from workbench.eval.quant_files import quantize_all
from workbench.gguf import read_gguf
from workbench.gguf.constants import Keys, LlamaFileType
from workbench.text.files import read_prompt_bytes, read_prompt_file

REQUIRED = {"file_a": str, "file_b": str, "left": str, "vote": str, "prompt": str}
ELO_K, ELO_BASE, ELO_SCALE = 32.0, 1000.0, 400.0


class ArenaVotesError(ValueError):
    """A votes file line that is not a vote record (the message names the file and line)."""


# --- reading ------------------------------------------------------------------------------------------
def check_record(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise ArenaVotesError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for k, typ in REQUIRED.items():
        if k not in rec:
            raise ArenaVotesError(f"{where}: missing field {k!r}")
        if not isinstance(rec[k], typ):
            raise ArenaVotesError(f"{where}: field {k!r} must be a string, got {rec[k]!r}")
    if rec["vote"] not in ("A", "B", "tie"):
        raise ArenaVotesError(f"{where}: vote {rec['vote']!r} must be 'A', 'B' or 'tie'")
    if rec["left"] not in ("A", "B"):
        raise ArenaVotesError(f"{where}: left {rec['left']!r} must be 'A' or 'B'")
    if rec["file_a"] == rec["file_b"]:
        raise ArenaVotesError(f"{where}: file_a and file_b are the same file {rec['file_a']!r}")
    return rec


def read_votes(path) -> list[dict]:
    """The vote records of a JSON-lines file (blank lines skipped); a bad line raises ArenaVotesError naming
    its number. A missing file is no votes yet."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ArenaVotesError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
            out.append(check_record(rec, where))
    return out


def games(records) -> list[tuple[str, str, float]]:
    """(file a, file b, score of a): 1 a won, 0 b won, 0.5 a tie."""
    return [(r["file_a"], r["file_b"], {"A": 1.0, "B": 0.0, "tie": 0.5}[r["vote"]]) for r in records]


# --- the statistics -----------------------------------------------------------------------------------
def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: ties as half wins)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, mid - half), min(1.0, mid + half)


def bradley_terry(game_list, files=None, iters: int = 10_000, tol: float = 1e-12) -> dict:
    """Bradley-Terry strengths (P(i beats j) = p_i / (p_i + p_j)) by Zermelo's / Hunter's MM iteration
    p_i <- W_i / sum_j n_ij / (p_i + p_j), ties as half a win each; normalized to sum to 1. A file that never
    won gets 0 (the MLE is at the boundary)."""
    files = list(files) if files is not None else sorted({f for g in game_list for f in g[:2]})
    if not files:
        return {}
    idx = {f: i for i, f in enumerate(files)}
    n = np.zeros((len(files), len(files)))
    w = np.zeros(len(files))
    for a, b, s in game_list:
        i, j = idx[a], idx[b]
        n[i, j] += 1
        n[j, i] += 1
        w[i] += s
        w[j] += 1 - s
    p = np.full(len(files), 1.0 / max(len(files), 1))
    played = n.sum(1) > 0
    for _ in range(iters):
        pair = p[:, None] + p[None, :]
        denom = np.where(n > 0, n / np.where(pair > 0, pair, 1.0), 0.0).sum(1)
        new = np.where(played & (denom > 0), w / np.where(denom > 0, denom, 1), 0.0)
        new = new / new.sum() if new.sum() > 0 else np.full(len(files), 1.0 / len(files))
        if np.max(np.abs(new - p)) < tol:
            p = new
            break
        p = new
    return {f: float(p[idx[f]]) for f in files}


def elo(game_list, files=None, k: float = ELO_K, base: float = ELO_BASE, scale: float = ELO_SCALE) -> dict:
    """Online Elo in the order the games were played: expected E_a = 1 / (1 + 10^((R_b - R_a)/scale)),
    R_a += k (S_a - E_a), R_b -= the same."""
    files = list(files) if files is not None else sorted({f for g in game_list for f in g[:2]})
    r = {f: base for f in files}
    for a, b, s in game_list:
        e = 1.0 / (1.0 + 10.0 ** ((r[b] - r[a]) / scale))
        r[a] += k * (s - e)
        r[b] -= k * (s - e)
    return r


def bootstrap(game_list, stat, files, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile interval of stat(games) per file over n_boot resamples (with replacement, seeded)."""
    if not game_list:
        return {f: (float("nan"), float("nan")) for f in files}
    rng = np.random.default_rng(seed)
    draws = np.array([[stat([game_list[i] for i in rng.integers(0, len(game_list), len(game_list))], files)[f]
                       for f in files] for _ in range(n_boot)])
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {f: (float(lo[i]), float(hi[i])) for i, f in enumerate(files)}


def position_bias(records) -> dict:
    """Left-win rate over the decisive votes (ties left out), with its Wilson interval."""
    sides = [r.get("vote_side") or ("tie" if r["vote"] == "tie" else ("left" if r["vote"] == r["left"] else "right"))
             for r in records]
    left, right = sides.count("left"), sides.count("right")
    lo, hi = wilson(left, left + right)
    return {"games": left + right + sides.count("tie"), "wins": left, "losses": right, "ties": sides.count("tie"),
            "win_rate": left / (left + right) if left + right else float("nan"), "win_lo": lo, "win_hi": hi}


def win_table(records, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per file: games, wins, losses, ties, win rate (ties half) with Wilson interval, Bradley-Terry
    strength and Elo with bootstrap intervals; then a row "position: left" (left-win rate of decisive votes)."""
    g = games(records)
    files = sorted({f for x in g for f in x[:2]})
    bt, el = bradley_terry(g, files), elo(g, files)
    bt_ci, el_ci = bootstrap(g, bradley_terry, files, n_boot, seed), bootstrap(g, elo, files, n_boot, seed)
    rows = []
    for f in files:
        wins = sum(1 for a, b, s in g if (a == f and s == 1) or (b == f and s == 0))
        ties = sum(1 for a, b, s in g if f in (a, b) and s == 0.5)
        n = sum(1 for a, b, _ in g if f in (a, b))
        lo, hi = wilson(wins + ties / 2, n)
        rows.append({"file": f, "games": n, "wins": wins, "losses": n - wins - ties, "ties": ties,
                     "win_rate": (wins + ties / 2) / n, "win_lo": lo, "win_hi": hi, "bt_strength": bt[f],
                     "bt_lo": bt_ci[f][0], "bt_hi": bt_ci[f][1], "elo": el[f], "elo_lo": el_ci[f][0],
                     "elo_hi": el_ci[f][1]})
    if records:
        rows.append({"file": "position: left", **position_bias(records)})
    cols = ["file", "games", "wins", "losses", "ties", "win_rate", "win_lo", "win_hi", "bt_strength", "bt_lo",
            "bt_hi", "elo", "elo_lo", "elo_hi"]
    return pd.DataFrame(rows, columns=cols).set_index("file")


# --- what needs no human: KLD on the arena's texts, task accuracy -----------------------------------------
def model_name(model) -> str:
    path = getattr(getattr(model, "gguf", None), "path", None)
    return Path(path).name if path else "?"


def scored_sequences(records, file_a: str, file_b: str) -> list[tuple[list[int], int]]:
    """(tokens, first scored row) per text: prompt + answer A from the prompt's second token, then answer B's
    tokens only (the shared prompt is scored once), for each vote of this pair that kept its tokens."""
    out = []
    for r in records:
        if {r["file_a"], r["file_b"]} != {file_a, file_b} or not r.get("prompt_tokens"):
            continue
        prompt = [int(t) for t in r["prompt_tokens"]]
        for key, first in (("tokens_a", 0), ("tokens_b", len(prompt) - 1)):
            toks = [int(t) for t in r.get(key) or []]
            if toks or first == 0:
                out.append((prompt + toks, first))
    return out


def _rows(model, tokens, first):
    return np.asarray(model.logits(np.asarray(tokens, np.int64), first_output=first), np.float32)[:len(tokens) - 1 - first]


def kld_per_row(model_rows: np.ndarray, ref_rows: np.ndarray, targets) -> np.ndarray:
    """KL(reference || model) per row, as perplexity.cpp's --kl-divergence computes it: the reference's
    log-probs go through the .kld file's uint16 records first."""
    return kld_rows(model_rows, encode_log_probs(ref_rows), np.asarray(targets, np.int64))[0]


def arena_kld(records, model_a, model_b, reference=None) -> dict:
    """{file: (mean KLD, rows, against)} for the two files on their arena prompts and answers: against the
    reference model when given, else each against the other, symmetric (KL(A||B) + KL(B||A)) / 2 for both.
    Each model's logits of a text are computed once (one text's rows at a time: n_vocab floats a row)."""
    fa, fb = model_name(model_a), model_name(model_b)
    for m in (model_b,) + ((reference,) if reference is not None else ()):
        if int(m.n_vocab) != int(model_a.n_vocab):
            raise ArenaVotesError(f"vocabularies differ: {model_name(m)} has {m.n_vocab} tokens, "
                                  f"{fa} {model_a.n_vocab}")
    vals = {"a": [], "b": [], "ab": [], "ba": []}
    for toks, first in scored_sequences(records, fa, fb):
        ra, rb = _rows(model_a, toks, first), _rows(model_b, toks, first)
        targets = toks[first + 1:]
        if not len(ra):
            continue
        if reference is not None:
            rr = _rows(reference, toks, first)
            vals["a"].append(kld_per_row(ra, rr, targets))
            vals["b"].append(kld_per_row(rb, rr, targets))
        else:
            vals["ab"].append(kld_per_row(rb, ra, targets))
            vals["ba"].append(kld_per_row(ra, rb, targets))

    def mean(key):
        kv = np.concatenate(vals[key]) if vals[key] else np.zeros(0)
        return (float(kv.mean()) if len(kv) else float("nan")), len(kv)

    if reference is not None:
        ref = model_name(reference)
        return {fa: (*mean("a"), ref), fb: (*mean("b"), ref)}
    (ab, n), (ba, _) = mean("ab"), mean("ba")
    sym = 0.5 * (ab + ba)
    return {fa: (sym, n, f"{fb} (symmetric)"), fb: (sym, n, f"{fa} (symmetric)")}


def load_tasks(task, n_tasks: int = 0):
    """A task list, or a task file as llama-perplexity reads it: .csv Winogrande, .bin multiple choice,
    anything else HellaSwag (first n_tasks, 0: all)."""
    if not isinstance(task, (str, Path)):
        tasks = list(task)
    elif str(task).endswith(".csv"):
        tasks = T.parse_winogrande(read_prompt_file(task))
    elif str(task).endswith(".bin"):
        tasks = T.read_multiple_choice(read_prompt_bytes(task))
    else:
        tasks = T.parse_hellaswag(read_prompt_file(task))
    return tasks[:n_tasks] if n_tasks else tasks


def task_accuracy(model, tasks) -> float:
    """Accuracy in % on HellaSwag / Winogrande / multiple-choice tasks (workbench.eval.tasks scoring)."""
    if not tasks:
        return float("nan")
    score = {T.HellaswagTask: T.hellaswag_score, T.WinograndeTask: T.winogrande_score,
             T.MultipleChoiceTask: T.multiple_choice_score}.get(type(tasks[0]))
    if score is None:
        raise T.TaskFileError(f"not a task: {type(tasks[0]).__name__}")
    return score(model, tasks).accuracy


def arena_summary(votes, models=None, reference=None, task=None, n_tasks: int = 0, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """win_table of the votes (a JSON-lines path or records), and with `models` (the two loaded files) the
    columns kld_mean / kld_rows / kld_vs (arena_kld) and, with `task`, task_acc (task_accuracy)."""
    records = read_votes(votes) if isinstance(votes, (str, Path)) else [check_record(r, f"record {i}")
                                                                       for i, r in enumerate(votes)]
    df = win_table(records, n_boot=n_boot, seed=seed)
    if models:
        if len(models) != 2:
            raise ValueError(f"arena_summary: give the two arena models, got {len(models)}")
        df["kld_mean"], df["kld_rows"], df["kld_vs"] = np.nan, np.nan, ""
        for f, (kl, n, vs) in arena_kld(records, *models, reference=reference).items():
            if f in df.index:
                df.at[f, "kld_mean"], df.at[f, "kld_rows"], df.at[f, "kld_vs"] = kl, n, vs
        if task is not None:
            tasks = load_tasks(task, n_tasks)
            df["task_acc"] = np.nan
            for m in models:
                if model_name(m) in df.index:
                    df.at[model_name(m), "task_acc"] = task_accuracy(m, tasks)
    return df


# --- the two files --------------------------------------------------------------------------------------
def file_type_name(path) -> str:
    """llama-quantize's name of a GGUF's general.file_type ("Q4_1", ...; "?" when absent)."""
    with read_gguf(path) as gf:
        ft = gf.metadata.get(Keys.General.FILE_TYPE)
    return LlamaFileType(int(ft)).name if ft is not None else "?"


def arena_files(model_path, ftypes, out_dir=None) -> list[Path]:
    """One file per ftype: the model itself where it already is that type, else the model requantized to it
    (workbench.eval.quant_files.quantize_all: allow_requantize, cached as <stem>.<ftype>.gguf)."""
    model_path = Path(model_path)
    own = file_type_name(model_path)
    todo = [ft for ft in ftypes if ft != own]
    made, _ = quantize_all(model_path, todo, out_dir=out_dir) if todo else ({}, None)
    return [model_path if ft == own else made[ft] for ft in ftypes]
