"""HellaSwag / Winogrande / multiple-choice scoring (workbench.eval.tasks) against llama-perplexity's protocol.

Always on: the tool's RNG draws (values printed by a libstdc++ 12 build of std::mt19937 /
uniform_int_distribution), the file parsers and writers, and the scoring on a fake model with known logits.
With llama_cpp importable: the same protocol on llama.cpp's logits (llama-cpp-python, flash attention on)
gives the same per-task decisions and accuracy as the workbench model (20 tasks a format; 100 with
WORKBENCH_SLOW=1).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from workbench.eval import task_files as F
from workbench.eval import tasks as T

MODEL = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"


# --- the tool's random draws ---------------------------------------------------------------------------
def test_mt19937_and_distributions_match_libstdcxx():
    assert T.MT19937(5489)() == 3499211612
    r = T.MT19937(1)
    assert [T.uniform_index(r, n) for n in (10042, 100, 7, 1, 3000000000)] == [4187, 99, 5, 0, 384373343]
    r = T.MT19937(1)
    assert [T.scaled_index(r, n) for n in (1267, 100, 55, 3)] == [528, 99, 39, 2]


def test_selection_orders():
    hs = [T.HellaswagTask(f"c{i}", 0, ["a", "b", "c", "d"]) for i in range(10)]
    picked = T.select_hellaswag(hs, 4)
    assert len(picked) == 4 and len({t.context for t in picked}) == 4
    assert T.select_hellaswag(hs, 400) != hs and sorted(t.context for t in T.select_hellaswag(hs, 400)) == \
        sorted(t.context for t in hs)                       # always shuffled, all of them
    assert T.select_winogrande(list(range(10)), 0) == list(range(10))
    assert T.select_winogrande(list(range(10)), 10) == list(range(10))
    assert len(set(T.select_winogrande(list(range(10)), 5))) == 5


# --- files ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sents():
    from workbench.text.files import read_prompt_file

    return {"en": F.sentences(read_prompt_file("/work/shared/data/botchan.txt"), "en"),
            "zh": F.sentences(read_prompt_file("/work/shared/data/zh_news.txt"), "zh")}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_hellaswag_file_round_trip(sents, lang):
    tasks = F.hellaswag_tasks(sents[lang], 30)
    text = T.hellaswag_text(tasks)
    from workbench.text.files import decode_prompt_bytes

    assert T.parse_hellaswag(decode_prompt_bytes(text.encode())) == tasks
    assert T.parse_hellaswag(text.replace("\n2\n", "\n 2\r\n", 1))[0].gold in (0, 1, 2, 3)   # stoi
    with pytest.raises(T.TaskFileError):
        T.parse_hellaswag("ctx\n1\na\nb\nc")


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_winogrande_file_round_trip(sents, lang):
    tasks = F.winogrande_tasks(sents[lang], 30, lang)
    assert len(tasks) == 30
    from workbench.text.files import decode_prompt_bytes

    assert T.parse_winogrande(decode_prompt_bytes(T.winogrande_csv(tasks).encode())) == tasks


def test_winogrande_loader_quirks():
    text = ('0,"Sarah, not Maria, so _ got the easy cases.",Sarah,Maria,2\n'
            "1,no blank here,a,b,1\n"
            "2,A _ B,x,y,3\n"
            "3,too,few\n"
            "4,The _ sat.,cat,dog,1\r\n"
            "5,Last _ line,a,b,1")                         # no '\n' after it: getline hits EOF, never read
    errors = []
    got = T.parse_winogrande(text, errors)
    assert got == [T.WinograndeTask("Sarah, not Maria, so ", " got the easy cases.", ["Sarah", "Maria"], 2),
                   T.WinograndeTask("The ", " sat.", ["cat", "dog"], 1)]
    assert len(errors) == 3


def test_multiple_choice_binary_round_trip_and_selection():
    tasks = [T.MultipleChoiceTask(f"question {i} ?".encode(), [b"yes", b"no", "也许".encode()][: 2 + i % 2],
                                  [1, 0, 0][: 2 + i % 2], [b"x"], [1]) for i in range(12)]
    data = T.multiple_choice_bytes(tasks)
    assert T.read_multiple_choice(data) == tasks
    picked = T.read_multiple_choice(data, 5)
    assert len(picked) == 5 and all(p in tasks for p in picked)
    assert picked == [tasks[i] for i in T.pick_random(list(range(12)), 5)]
    with pytest.raises(T.TaskFileError):
        T.read_multiple_choice(data[:-3])
    with pytest.raises(T.TaskFileError):
        T.read_multiple_choice(b"\0\0\0\0")


@pytest.mark.parametrize("layout", ["mmlu", "ceval", "cmmlu"])
def test_csv_to_multiple_choice(layout):
    rows = [["What is 1+1?", "1", "2", "3", "4", "B"], ["中国的首都是？", "上海", "北京", "广州", "深圳", "b"]]
    if layout == "mmlu":
        text = F.csv_text(rows)
    elif layout == "ceval":
        text = F.csv_text([[i, *r, "explanation"] for i, r in enumerate(rows)],
                          ["id", "question", "A", "B", "C", "D", "answer", "explanation"])
    else:
        text = "\ufeff" + F.csv_text([[i, *r] for i, r in enumerate(rows)], ["", "Question", "A", "B", "C", "D", "Answer"])
    tasks = F.multiple_choice_from_csv(text)
    assert [t.labels for t in tasks] == [[0, 1, 0, 0]] * 2
    assert tasks[1].question == "中国的首都是？".encode() and tasks[1].answers[1] == "北京".encode()
    assert T.read_multiple_choice(T.multiple_choice_bytes(tasks)) == tasks


# --- scoring on a fake model ---------------------------------------------------------------------------
class FakeModel:
    """Bytes as tokens (BOS = 256); the logits at a position depend only on the tokens up to it."""
    n_vocab = 300

    def tokenize(self, text, add_special=True, parse_special=False):
        return [256] + list(text.encode())

    def logits(self, tokens, first_output=0):
        out = []
        for p in range(first_output, len(tokens)):
            seed = hash(tuple(int(t) for t in tokens[: p + 1])) & 0xFFFFFFFF
            out.append(np.random.default_rng(seed).normal(0, 3, self.n_vocab).astype(np.float32))
        return np.array(out, np.float32)


def _logp(model, seq, pos):
    """log softmax in float64 of seq[pos + 1] after seq[:pos + 1] (the independent reference)."""
    row = model.logits(seq[: pos + 1], pos)[0].astype(np.float64)
    return row[seq[pos + 1]] - row.max() - math.log(np.sum(np.exp(row - row.max())))


def test_logprob_kernels_close_to_float64():
    rng = np.random.default_rng(1)
    lg = rng.normal(0, 5, (6, 1000)).astype(np.float32)
    tg = rng.integers(0, 1000, 6)
    ref = [r[t] - r.max() - math.log(np.exp(r.astype(np.float64) - r.max()).sum()) for r, t in zip(lg, tg)]
    assert np.allclose(T.compute_logprobs(lg, tg), ref, atol=2e-5)
    assert np.allclose(T.first_logprobs(lg[0], tg), [ref[0] + lg[0, t] - lg[0, tg[0]] for t in tg], atol=2e-5)
    assert T.compute_logprobs(lg, tg).dtype == np.float32


def test_hellaswag_and_multiple_choice_on_fake_model():
    m = FakeModel()
    tasks = [T.HellaswagTask(f"The cat {i}", i % 4, ["sat down.", "ran off", "ate it all", "sat up."]) for i in range(8)]
    r = T.hellaswag_score(m, tasks)
    for t, s in zip(tasks, r.tasks):
        seqs = [m.tokenize(t.context + " " + e) for e in t.endings]
        cp = T.common_prefix(seqs)
        ref = [np.mean([_logp(m, q, j) for j in range(cp - 1, len(q) - 1)]) for q in seqs]
        assert np.allclose(s.scores, ref, atol=1e-5)
        assert s.choice == int(np.argmax(ref)) and s.correct == (s.choice == t.gold)
    mc = T.multiple_choice_score(m, [T.MultipleChoiceTask(t.context.encode(), [e.encode() for e in t.endings],
                                                          [int(j == t.gold) for j in range(4)]) for t in tasks])
    assert [s.choice for s in mc.tasks] == [s.choice for s in r.tasks]
    assert np.allclose([s.scores for s in mc.tasks], [s.scores for s in r.tasks], atol=1e-5)


def test_winogrande_partial_scoring_on_fake_model():
    m = FakeModel()
    # long tails: only the tokens after the choice, without the last one
    t = T.WinograndeTask("Anna told Bea that ", " was going to win the whole game.", ["Anna", "Bea"], 1)
    s = T.winogrande_score(m, [t]).tasks[0]
    for k, c in enumerate(t.choices):
        q = m.tokenize(t.first + c + t.second)
        nb = len(m.tokenize(t.first + c))
        assert math.isclose(s.scores[k], np.mean([_logp(m, q, j) for j in range(nb - 1, len(q) - 2)]), abs_tol=1e-5)
    # short tails: from the common prefix; the 2nd choice's first term uses the 1st sequence's last row (FIXME)
    t = T.WinograndeTask("It is ", "!", ["ox", "cow"], 2)
    s = T.winogrande_score(m, [t]).tasks[0]
    q0, q1 = (m.tokenize(t.first + c + t.second) for c in t.choices)
    cp = T.common_prefix([q0, q1])
    assert math.isclose(s.scores[0], np.mean([_logp(m, q0, j) for j in range(cp - 1, len(q0) - 2)]), abs_tol=1e-5)
    row = m.logits(q0, len(q0) - 1)[0].astype(np.float64)
    first = row[q1[cp]] - row.max() - math.log(np.exp(row - row.max()).sum())
    ref = [first] + [_logp(m, q1, j) for j in range(cp, len(q1) - 2)]
    assert math.isclose(s.scores[1], np.mean(ref), abs_tol=1e-5)
    assert s.choice == (0 if s.scores[0] > s.scores[1] else 1)


# --- against llama.cpp's logits ------------------------------------------------------------------------
class LlamaCppRows:
    """llama-cpp-python as a task model: its tokenizer, and each sequence evaluated alone (all logits)."""

    def __init__(self, path, flash_attn):
        from llama_cpp import Llama

        self.llm = Llama(path, n_ctx=2048, n_batch=512, logits_all=True, flash_attn=flash_attn, verbose=False)

    def tokenize(self, text, add_special=True, parse_special=False):
        return self.llm.tokenize(text.encode() if isinstance(text, str) else text, add_bos=add_special,
                                 special=parse_special)

    def logits(self, tokens, first_output=0):
        self.llm.reset()
        self.llm.eval([int(t) for t in tokens])
        return np.array(self.llm.scores[first_output:len(tokens)], np.float32)


# Both sides without flash attention: a sequence alone is a small batch, where llama.cpp's flash attention takes
# its per-row fp16 path (logits off by up to ~1), which workbench does not reproduce; llama-perplexity itself
# packs tasks into batches of >= 64 tokens (the tiled path, flash_attn=True here). Without it the logits agree.
@pytest.fixture(scope="module")
def models():
    pytest.importorskip("llama_cpp")
    import workbench

    return workbench.load(MODEL, n_ctx=2048, flash_attn=False), LlamaCppRows(MODEL, flash_attn=False)


def _task_sets(sents, n):
    hs = T.select_hellaswag(F.hellaswag_tasks(sents["en"], 2 * n, seed=1), n)
    wg = {lang: T.select_winogrande(F.winogrande_tasks(sents[lang], 2 * n, lang, seed=2), n) for lang in ("en", "zh")}
    mc = {lang: T.multiple_choice_bytes(F.multiple_choice_from_csv(F.csv_text(F.mc_csv_rows(sents[lang], 2 * n, 3))))
          for lang in ("en", "zh")}
    return {"hellaswag-en": (T.hellaswag_score, hs), "winogrande-en": (T.winogrande_score, wg["en"]),
            "winogrande-zh": (T.winogrande_score, wg["zh"]),
            "multiple-choice-en": (T.multiple_choice_score, T.read_multiple_choice(mc["en"], n)),
            "multiple-choice-zh": (T.multiple_choice_score, T.read_multiple_choice(mc["zh"], n))}


def _compare(models, sents, n, kinds):
    ours, ref = models
    for kind in kinds:
        score, tasks = _task_sets(sents, n)[kind]
        t0 = time.perf_counter()
        a = score(ours, tasks)
        t1 = time.perf_counter()
        b = score(ref, tasks)
        t2 = time.perf_counter()
        assert [t.tokens for t in a.tasks] == [t.tokens for t in b.tasks], f"{kind}: tokenization differs"
        agree = sum(x.choice == y.choice for x, y in zip(a.tasks, b.tasks))
        gap = max(abs(u - v) for x, y in zip(a.tasks, b.tasks) for u, v in zip(x.scores, y.scores))
        print(f"\n{kind} n={len(tasks)}: workbench {a.accuracy:.2f}% ({t1 - t0:.1f}s)  llama.cpp {b.accuracy:.2f}% "
              f"({t2 - t1:.1f}s)  same choice {agree}/{len(tasks)}  max |score diff| {gap:.2e}")
        assert len(tasks) == n
        assert a.accuracy == b.accuracy, f"{kind}: {a.summary()} vs llama.cpp {b.summary()}"
        assert agree >= len(tasks) - max(1, len(tasks) // 50)


def test_tasks_match_llama_cpp(models, sents):
    _compare(models, sents, 20, ["hellaswag-en", "winogrande-zh", "multiple-choice-en"])


@pytest.mark.slow
def test_tasks_match_llama_cpp_100(models, sents):
    _compare(models, sents, 100, ["hellaswag-en", "winogrande-zh", "multiple-choice-zh"])
