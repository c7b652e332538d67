"""HellaSwag, Winogrande and multiple-choice scores exactly as llama-perplexity computes them
(tools/perplexity/perplexity.cpp: hellaswag_score, winogrande_score, multiple_choice_score).

Files, as the tool reads them (`-f` drops one trailing '\\n'; `-bf` reads bytes):
  HellaSwag        6 lines a task: context, gold index, 4 endings. Tasks are always drawn at random
                   (std::mt19937(1), std::uniform_int_distribution over those left), `--hellaswag-tasks` (400).
  Winogrande       CSV `index,sentence,choice1,choice2,answer`, sentence with one '_'; the sentence may be
                   "quoted". The line after the last '\\n' is never read (its getline hits EOF).
  multiple choice  binary: uint32 n_task, uint32 offset[n_task], then per task: string question, mc1, mc2,
                   answers = uint32 n, n strings, int32 labels[n]; string = uint32 length + bytes.
Scoring: every choice is tokenized with BOS as the model adds it (`common_tokenize(ctx, text, true)`); the tokens
after the choices' common prefix score it by their mean log-prob. The first one's log-prob is logf of softmax()
(float probs over a double sum), the others compute_logprobs' float log-softmax; HellaSwag sums in double, the
multiple-choice score in float. Winogrande (partial scoring) scores only the tokens after the choice word when
both tails are > 3 tokens, skips the last token, and keeps the tool's row indexing (its FIXME included).

The tool packs many tasks' sequences into one multi-sequence batch; here each sequence is evaluated alone by
`logits(tokens, first)` (rows of positions first..). The rows mean the same thing; their last bits may differ
(flash-attention tiling over another cache layout), so a near-tie could decide differently.
"""
from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from workbench.eval.logprobs import max_and_sum_exp
from workbench.text.files import decode_utf8


class TaskFileError(ValueError):
    """A task file the tool would reject (message names the task / byte offset)."""


# --- the tool's random task selection -----------------------------------------------------------------
class MT19937:
    """std::mt19937 (init_genrand seeding); calling it gives the next uint32. numpy's MT19937 with its legacy
    seeding is the same generator (as workbench.llama.sampling.LlamaRNG uses it)."""

    def __init__(self, seed: int = 5489):
        self._mt = np.random.MT19937()
        self._mt._legacy_seeding(seed & 0xFFFFFFFF)

    def __call__(self) -> int:
        return int(self._mt.random_raw())


def uniform_index(rng: MT19937, n: int) -> int:
    """std::uniform_int_distribution<size_t>(0, n-1)(rng) as libstdc++ (GCC >= 11) draws it from a 32-bit
    engine: Lemire's multiply-shift with rejection (_S_nd). libc++ (macOS) draws other numbers."""
    if not 1 <= n <= 1 << 32:
        raise ValueError(f"uniform_index: n={n} outside 1..2^32")
    if n == 1 << 32:
        return rng()
    product = rng() * n
    low = product & 0xFFFFFFFF
    if low < n:
        threshold = ((1 << 32) - n) % n
        while low < threshold:
            product = rng() * n
            low = product & 0xFFFFFFFF
    return product >> 32


_F32_SCALE = np.float32(1.0) / (np.float32(1.0) + np.float32(4294967295.0))   # 1/(1.f + (float)rng.max())


def scaled_index(rng: MT19937, n: int) -> int:
    """`int(scale * rng() * aux.size())` in float32, as winogrande_score / multiple_choice_score pick a task."""
    return int(np.float32(np.float32(_F32_SCALE * np.float32(rng())) * np.float32(n)))


def pick_random(items: list, n_tasks: int) -> list:
    """Winogrande / multiple-choice selection: n_tasks of them without replacement (swap-with-last), seed 1."""
    rng = MT19937(1)
    aux = list(range(len(items)))
    out = []
    for _ in range(n_tasks):
        j = scaled_index(rng, len(aux))
        out.append(items[aux[j]])
        aux[j] = aux[-1]
        aux.pop()
    return out


# --- HellaSwag -----------------------------------------------------------------------------------------
@dataclass
class HellaswagTask:
    context: str          # activity_label + ": " + ctx
    gold: int             # index of the true ending
    endings: list[str]    # 4 endings


def getline_lines(text: str) -> list[str]:
    """`while (std::getline(in, line, '\\n'))`: the last piece counts unless it is empty."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def stoi(s: str, where: str) -> int:
    m = re.match(r"\s*([+-]?\d+)", s)
    if not m:
        raise TaskFileError(f"{where}: stoi cannot parse {s!r}")
    return int(m.group(1))


def parse_hellaswag(text: str) -> list[HellaswagTask]:
    lines = getline_lines(text)
    if len(lines) % 6:
        raise TaskFileError(f"hellaswag: number of lines in prompt ({len(lines)}) not a multiple of 6")
    return [HellaswagTask(lines[i], stoi(lines[i + 1], f"hellaswag task {i // 6} line {i + 2}"), lines[i + 2:i + 6])
            for i in range(0, len(lines), 6)]


def select_hellaswag(tasks: list[HellaswagTask], n_tasks: int = 400) -> list[HellaswagTask]:
    """The tool's order: always random, a uniform draw among the tasks left, min(n_tasks, all) of them."""
    rng, left = MT19937(1), list(tasks)
    return [left.pop(uniform_index(rng, len(left))) for _ in range(min(n_tasks, len(tasks)))]


def hellaswag_text(tasks: list[HellaswagTask]) -> str:
    """The 6-line-per-task file text (newline at the end)."""
    for i, t in enumerate(tasks):
        if len(t.endings) != 4 or any("\n" in s or "\r" in s for s in [t.context, *t.endings]):
            raise TaskFileError(f"hellaswag task {i}: needs 4 endings and no line breaks")
    return "".join(f"{t.context}\n{t.gold}\n" + "".join(e + "\n" for e in t.endings) for t in tasks)


# --- Winogrande ----------------------------------------------------------------------------------------
@dataclass
class WinograndeTask:
    first: str            # sentence before the '_'
    second: str           # sentence after the '_'
    choices: list[str]    # the two options
    answer: int           # 1 or 2


def parse_winogrande(text: str, errors: list | None = None) -> list[WinograndeTask]:
    """load_winogrande_from_csv: lines it cannot use are skipped (reasons appended to `errors`)."""
    out = []
    pieces = text.split("\n")[:-1]              # getline stops at EOF: the piece after the last '\n' is lost
    for line in pieces:
        commas, quote_open = [], False
        for i, c in enumerate(line):
            if not quote_open:
                if c == ",":
                    commas.append(i)
                    if len(commas) == 4:
                        break
                elif c == '"':
                    quote_open = True
            elif c == '"':
                quote_open = False
        if len(commas) != 4:
            errors is not None and errors.append(f"failed to find comma separators in <{line}>")
            continue
        c0, c1, c2, c3 = commas
        sentence = line[c0 + 2:c1 - 1] if line[c0 + 1] == '"' else line[c0 + 1:c1]
        where = sentence.find("_")
        if where < 0:
            errors is not None and errors.append(f"no _ in <{sentence}>")
            continue
        m = re.match(r"\s*([+-]?\d+)", line[c3 + 1:])   # std::istringstream >> int
        if not m or int(m.group(1)) not in (1, 2):
            errors is not None and errors.append(f"failed to parse answer <{line[c3 + 1:]}>")
            continue
        out.append(WinograndeTask(sentence[:where], sentence[where + 1:], [line[c1 + 1:c2], line[c2 + 1:c3]],
                                  int(m.group(1))))
    return out


def select_winogrande(tasks: list, n_tasks: int = 0) -> list:
    return pick_random(tasks, n_tasks) if 0 < n_tasks < len(tasks) else list(tasks)


def winogrande_csv(tasks: list[WinograndeTask]) -> str:
    """CSV lines `index,sentence,choice1,choice2,answer`, plus an empty last line so the tool reads every task."""
    rows = []
    for i, t in enumerate(tasks):
        sentence = f"{t.first}_{t.second}"
        if any(c in s for s in t.choices for c in ',"\n\r') or any(c in sentence for c in '"\n\r'):
            raise TaskFileError(f"winogrande task {i}: choices may not hold , or \", the sentence no \" or line break")
        if "," in sentence:
            sentence = f'"{sentence}"'
        rows.append(f"{i},{sentence},{t.choices[0]},{t.choices[1]},{t.answer}\n")
    return "".join(rows) + "\n"


# --- multiple choice (binary) --------------------------------------------------------------------------
@dataclass
class MultipleChoiceTask:
    question: bytes
    answers: list[bytes]                                    # mc1: single correct answer
    labels: list[int]
    mc2_answers: list[bytes] = field(default_factory=list)  # multiple correct answers: read, not scored
    mc2_labels: list[int] = field(default_factory=list)


def _string(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def _answers(answers, labels) -> bytes:
    return struct.pack("<I", len(answers)) + b"".join(map(_string, answers)) + struct.pack(f"<{len(labels)}i", *labels)


def multiple_choice_bytes(tasks: list[MultipleChoiceTask]) -> bytes:
    """The binary file: header (n_task, offsets), then the serialized tasks."""
    bodies = [_string(t.question) + _answers(t.answers, t.labels) + _answers(t.mc2_answers, t.mc2_labels)
              for t in tasks]
    pos, offsets = 4 + 4 * len(tasks), []
    for b in bodies:
        offsets.append(pos)
        pos += len(b)
    return struct.pack(f"<I{len(tasks)}I", len(tasks), *offsets) + b"".join(bodies)


def _read(f: io.BytesIO, n: int, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise TaskFileError(f"multiple choice: file ends in {what} at byte {f.tell()}")
    return b


def _read_answers(f, what):
    n = struct.unpack("<I", _read(f, 4, what))[0]
    if n > 100:
        raise TaskFileError(f"multiple choice: {what} has {n} > 100 answers")
    answers = [_read(f, struct.unpack("<I", _read(f, 4, what))[0], what) for _ in range(n)]
    return answers, list(struct.unpack(f"<{n}i", _read(f, 4 * n, what)))


def read_task(f, what: str) -> MultipleChoiceTask:
    q = _read(f, struct.unpack("<I", _read(f, 4, what))[0], what)
    a1, l1 = _read_answers(f, what)
    a2, l2 = _read_answers(f, what)
    return MultipleChoiceTask(q, a1, l1, a2, l2)


def read_multiple_choice(data: bytes, n_tasks: int = 0) -> list[MultipleChoiceTask]:
    """All tasks in file order (read one after the other), or n_tasks drawn at random (read at their offsets)."""
    f = io.BytesIO(data)
    n = struct.unpack("<I", _read(f, 4, "the header"))[0] if len(data) >= 4 else 0
    if n == 0:
        raise TaskFileError("multiple choice: no tasks")
    offsets = struct.unpack(f"<{n}I", _read(f, 4 * n, "the task offsets"))
    if n_tasks == 0 or n_tasks >= n:
        return [read_task(f, f"task {i}") for i in range(n)]
    out = []
    for i in pick_random(list(range(n)), n_tasks):
        f.seek(offsets[i])
        out.append(read_task(f, f"task {i} at offset {offsets[i]}"))
    return out


# --- log-probs as perplexity.cpp computes them ---------------------------------------------------------
@njit(cache=True, parallel=True)
def _compute_logprobs(logits, targets, out):
    for r in prange(logits.shape[0]):
        row = logits[r]
        mx = row[0]
        for j in range(1, row.shape[0]):
            mx = max(mx, row[j])
        s = np.float32(0.0)                                 # float sum_p += expf(...)
        for j in range(row.shape[0]):
            s += math.exp(row[j] - mx)
        out[r] = row[targets[r]] - mx - math.log(s)


def compute_logprobs(logits: np.ndarray, targets) -> np.ndarray:
    """compute_logprobs: float32 log-softmax of target per row (float max, float sum of expf, logf)."""
    logits = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1, np.shape(logits)[-1])
    targets = np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)
    out = np.empty(len(targets), np.float32)
    if len(targets):
        _compute_logprobs(logits, targets, out)
    return out


@njit(cache=True)
def _first_logprobs(row, toks, out):
    mx, _, s = max_and_sum_exp(row)                         # softmax(): double sum_exp += expf(logit - max)
    for k in range(toks.shape[0]):
        p = np.float32(np.float64(math.exp(row[toks[k]] - mx)) / s)   # probs[i] /= sum_exp
        out[k] = math.log(p)                                # std::log(float)


def first_logprobs(row: np.ndarray, toks) -> np.ndarray:
    """std::log(softmax(row)[tok]) for each tok, in float32 (the first ending token's term)."""
    toks = np.ascontiguousarray(toks, dtype=np.int64)
    out = np.empty(len(toks), np.float32)
    _first_logprobs(np.ascontiguousarray(row, dtype=np.float32), toks, out)
    return out


# --- scoring -------------------------------------------------------------------------------------------
def common_prefix(seqs) -> int:
    n = 0
    for col in zip(*seqs):
        if any(t != col[0] for t in col):
            break
        n += 1
    return n


@dataclass
class TaskScore:
    scores: list[float]     # per choice
    choice: int             # index picked (first maximum; Winogrande: 0 if score1 > score2 else 1)
    correct: bool
    tokens: list[list[int]] = field(repr=False, default_factory=list)


@dataclass
class TaskResult:
    kind: str
    tasks: list[TaskScore]

    @property
    def n_correct(self) -> int:
        return sum(t.correct for t in self.tasks)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.n_correct / len(self.tasks) if self.tasks else float("nan")

    def summary(self) -> str:
        n, p = len(self.tasks), self.n_correct / max(len(self.tasks), 1)
        sigma = 100 * math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
        return f"{self.kind}: {self.n_correct}/{n} correct, {100 * p:.4f} +/- {sigma:.4f}"


def model_rows(model):
    """`rows(tokens, first)`: logits of positions first.. of one fresh sequence (a workbench Model, or any
    object with `logits(tokens, first_output=)`)."""
    def rows(tokens, first):
        return np.asarray(model.logits(np.asarray(tokens, np.int64), first_output=first), np.float32)
    return rows


def tokenize(model, text) -> list[int]:
    """common_tokenize(ctx, text, true): special tokens added as the model does, not parsed."""
    return [int(t) for t in model.tokenize(text, add_special=True, parse_special=False)]


def ending_scores(rows, seqs, accumulate=np.float64) -> tuple[int, list[float]]:
    """Mean log-prob of the tokens after the common prefix of each sequence (hellaswag / multiple choice)."""
    cp = common_prefix(seqs)
    if cp == 0 or any(len(s) <= cp for s in seqs):
        raise TaskFileError(f"choices need a common prefix and a token after it (prefix {cp}, lengths "
                            f"{[len(s) for s in seqs]})")
    first_row = None
    scores = []
    for k, seq in enumerate(seqs):
        lg = rows(seq, cp - 1)[: len(seq) - cp]             # positions cp-1 .. len-2
        if first_row is None:
            first_row = lg[0]                               # the shared prefix's last row, computed once
        lp = compute_logprobs(lg[1:], seq[cp + 1:])
        total = accumulate(first_logprobs(first_row, [seq[cp]])[0])
        for x in lp:
            total = accumulate(total + accumulate(x))
        scores.append(float(accumulate(total / accumulate(1 + len(lp)))))
    return cp, scores


def first_max(scores) -> int:
    best = 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best]:
            best = i
    return best


def hellaswag_score(model, tasks: list[HellaswagTask], rows=None, progress=False) -> TaskResult:
    """acc_norm of the tasks in the order given (select_hellaswag gives the tool's)."""
    rows = rows or model_rows(model)
    out = []
    for t in _progress(tasks, progress, "hellaswag"):
        seqs = [tokenize(model, t.context + " " + e) for e in t.endings]
        _, sc = ending_scores(rows, seqs, np.float64)
        best = first_max(sc)
        out.append(TaskScore(sc, best, best == t.gold, seqs))
    return TaskResult("hellaswag", out)


def multiple_choice_score(model, tasks: list[MultipleChoiceTask], rows=None, progress=False) -> TaskResult:
    rows = rows or model_rows(model)
    out = []
    for i, t in enumerate(_progress(tasks, progress, "multiple choice")):
        if not t.question or not t.answers or not all(t.answers):
            raise TaskFileError(f"multiple choice task {i}: empty question and/or answers")
        seqs = [tokenize(model, _text(t.question + b" " + a)) for a in t.answers]
        _, sc = ending_scores(rows, seqs, np.float32)
        best = first_max(sc)
        out.append(TaskScore(sc, best, t.labels[best] == 1, seqs))
    return TaskResult("multiple choice", out)


K_MIN_TRAILING_CTX = 3


def winogrande_one(rows, seq0, seq1, n_base1, n_base2) -> list[float]:
    """Both scores as winogrande_score computes them, including its row indexing (li)."""
    cp = common_prefix([seq0, seq1])
    n0 = len(seq0) - cp
    skip_choice = n0 > K_MIN_TRAILING_CTX and len(seq1) - cp > K_MIN_TRAILING_CTX
    first = max(min(cp, n_base1, n_base2) - 1, 0)
    lg0, lg1 = rows(seq0, first), rows(seq1, first)

    def row(li):  # the tool's batch row li of this task: prefix end, then seq0's tokens, then seq1's
        if li < 0 or li > n0 + len(seq1) - cp:
            raise TaskFileError(f"winogrande: row {li} outside the task (prefix {cp}, lengths {len(seq0)}, {len(seq1)})")
        return lg0[cp - 1 - first + li] if li <= n0 else lg1[cp - 1 - first + li - n0]

    scores = []
    for s, (seq, nb) in enumerate(((seq0, n_base1), (seq1, n_base2))):
        nb = nb if skip_choice else cp
        last = 1 if len(seq) - nb > 1 else 0
        li = nb - cp if s == 0 else n0 + nb - cp            # FIXME in the tool: wrong first row without skip
        js = range(nb - 1, len(seq) - 1 - last)
        lg = np.array([row(li + k) for k in range(len(js))], np.float32).reshape(len(js), lg0.shape[1])
        total = np.float32(0)
        for x in compute_logprobs(lg, [seq[j + 1] for j in js]):
            total = np.float32(total + x)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores.append(float(np.float32(total / np.float32(len(seq) - nb - last))))
    return scores


def winogrande_score(model, tasks: list[WinograndeTask], rows=None, progress=False) -> TaskResult:
    rows = rows or model_rows(model)
    out = []
    for t in _progress(tasks, progress, "winogrande"):
        seqs = [tokenize(model, t.first + c + t.second) for c in t.choices]
        nb = [len(tokenize(model, t.first + c)) for c in t.choices]
        sc = winogrande_one(rows, seqs[0], seqs[1], nb[0], nb[1])
        choice = 0 if sc[0] > sc[1] else 1
        out.append(TaskScore(sc, choice, choice + 1 == t.answer, seqs))
    return TaskResult("winogrande", out)


def _text(b: bytes) -> str:
    return decode_utf8(b)


def _progress(items, on, desc):
    if not on:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc)
