"""Small task files of our own in llama-perplexity's formats, built from the project's texts (never downloaded),
and the converter from the usual public CSV layouts (MMLU / C-Eval / CMMLU) to the multiple-choice binary.

    sentences(text, lang)             the text's sentences (English on . ! ?, Chinese on 。！？)
    hellaswag_tasks(sents, n)         context = a sentence, gold = the next one, 3 endings from elsewhere
    winogrande_tasks(sents, n)        a word (English) / two characters (Chinese) blanked; the other option
                                      is the same-sized piece of another sentence
    mc_csv_rows(sents, n)             MMLU-layout rows (question, A, B, C, D, answer letter)
    multiple_choice_from_csv(text)    those rows, or C-Eval's / CMMLU's headed ones -> MultipleChoiceTask list
Everything is drawn with numpy's default_rng(seed): the files are fixtures, not part of the exact path.
"""
from __future__ import annotations

import csv
import io
import re

import numpy as np

from workbench.eval.tasks import HellaswagTask, MultipleChoiceTask, TaskFileError, WinograndeTask

_SPLIT = {"en": re.compile(r"(?<=[.!?])\s+"), "zh": re.compile(r"(?<=[。！？])")}
_LIMITS = {"en": (40, 160), "zh": (12, 60)}


def sentences(text: str, lang: str = "en") -> list[str]:
    """Sentences of moderate length, line breaks and the characters our formats cannot hold removed."""
    text = text.lstrip("\ufeff").replace("\r", " ").replace("\n", " " if lang == "en" else "")
    lo, hi = _LIMITS[lang]
    out = []
    for s in _SPLIT[lang].split(text):
        s = " ".join(s.replace('"', "'").replace("_", " ").split())
        if lo <= len(s) <= hi:
            out.append(s)
    return out


def _others(rng, n_all, i, k):
    """k distinct indexes other than i and i+1."""
    pool = rng.choice(n_all, size=k + 4, replace=False)
    return [int(j) for j in pool if j not in (i, i + 1)][:k]


def hellaswag_tasks(sents: list[str], n: int, seed: int = 0) -> list[HellaswagTask]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(sents) - 1, size=n, replace=False):
        endings = [sents[j] for j in _others(rng, len(sents), int(i), 3)]
        gold = int(rng.integers(4))
        endings.insert(gold, sents[i + 1])
        out.append(HellaswagTask(sents[i], gold, endings))
    return out


def _pieces(sent: str, lang: str):
    """(start, end) of the blankable pieces: words of >= 3 letters, or 2 Han characters."""
    pat = r"[A-Za-z]{3,}" if lang == "en" else r"[\u4e00-\u9fff]{2}"
    return [m.span() for m in re.finditer(pat, sent)]


def winogrande_tasks(sents: list[str], n: int, lang: str = "en", seed: int = 0) -> list[WinograndeTask]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(sents)):
        spans = _pieces(sents[i], lang)
        if len(spans) < 2:
            continue
        a, b = spans[int(rng.integers(len(spans) - 1))]            # not the last piece: some text follows
        true = sents[i][a:b]
        wrong = _piece_text(sents, rng, lang, true)
        if wrong is None:
            continue
        answer = int(rng.integers(1, 3))
        choices = [true, wrong] if answer == 1 else [wrong, true]
        out.append(WinograndeTask(sents[i][:a], sents[i][b:], choices, answer))
        if len(out) == n:
            break
    return out


def _piece_text(sents, rng, lang, not_this):
    for _ in range(20):
        s = sents[int(rng.integers(len(sents)))]
        spans = _pieces(s, lang)
        if spans:
            a, b = spans[int(rng.integers(len(spans)))]
            if s[a:b] != not_this:
                return s[a:b]
    return None


def mc_csv_rows(sents: list[str], n: int, seed: int = 0) -> list[list[str]]:
    """MMLU-layout rows: which sentence follows the question's one (question, A, B, C, D, answer letter)."""
    return [[t.context, *t.endings, "ABCD"[t.gold]] for t in hellaswag_tasks(sents, n, seed)]


def csv_text(rows: list[list[str]], header: list[str] | None = None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def multiple_choice_from_csv(text: str) -> list[MultipleChoiceTask]:
    """MMLU (no header: question,A,B,C,D,answer), C-Eval (id,question,A,B,C,D,answer[,explanation]) or CMMLU
    ("",Question,A,B,C,D,Answer) rows -> tasks with the 4 answers and a one-hot label (answer letter A-D)."""
    rows = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if r]
    if not rows:
        raise TaskFileError("multiple choice csv: no rows")
    head = [c.strip().lower() for c in rows[0]]
    if "question" in head and "answer" in head:
        cols = [head.index(k) for k in ("question", "a", "b", "c", "d", "answer")]
        rows = rows[1:]
    else:
        cols = list(range(6))
    tasks = []
    for i, r in enumerate(rows):
        try:
            q, a, b, c, d, ans = (r[k].strip() for k in cols)
        except IndexError:
            raise TaskFileError(f"multiple choice csv row {i}: {len(r)} columns, need question, A-D, answer") from None
        if ans.upper() not in ("A", "B", "C", "D"):
            raise TaskFileError(f"multiple choice csv row {i}: answer {ans!r} is not A-D")
        k = "ABCD".index(ans.upper())
        tasks.append(MultipleChoiceTask(q.encode(), [x.encode() for x in (a, b, c, d)], [int(j == k) for j in range(4)]))
    return tasks
