"""The blind A/B arena without a browser (workbench.ui.arena_widget: scripted clicks and Enter presses on two toy
models, stop mid-stream, the votes file, the hidden order) and its statistics (workbench.eval.arena: Wilson,
Bradley-Terry, Elo against hand-computed values, bad votes lines, KLD against an independent float64 one)."""
from __future__ import annotations

import html
import json
import math
import threading

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from workbench.eval import arena as A  # noqa: E402

GREEDY = dict(temperature=0.0)


@pytest.fixture(scope="module")
def toy_paths(toy_dir):
    # two different toy models with the same vocabulary: their greedy answers differ, so a mix-up would show
    return toy_dir / "tiny-mixtral-f16.gguf", toy_dir / "tiny-mixtral8-f16.gguf"


@pytest.fixture(scope="module")
def toy_models(toy_paths):
    import workbench
    return tuple(workbench.load(p, n_ctx=256) for p in toy_paths)


@pytest.fixture()
def make_arena(toy_models, tmp_path):
    from workbench.ui.arena_widget import ArenaWidget

    made = []

    def make(threaded=False, max_tokens=4, seed=11, prompts=None, **kw):
        w = ArenaWidget(*toy_models, prompts=prompts, votes_path=tmp_path / "votes.jsonl", seed=seed,
                        threaded=threaded, max_tokens=max_tokens, **{**GREEDY, **kw})
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
        w.wait(60)


def press_enter(w, text):
    """What the browser sends: the typed value, then the Text view's {"event": "submit"} message."""
    w.prompt_box.value = text
    w.prompt_box._handle_custom_msg({"event": "submit"}, [])


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def library_answer(model, prompt, max_tokens, seed):
    from workbench.llama.generate import chat
    text, final = chat(model, [{"role": "user", "content": prompt}], stream=False, max_tokens=max_tokens,
                       seed=seed, **GREEDY)
    return text, final.tokens


# --- the widget ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("left", ["A", "B"])
def test_round_streams_both_answers_and_a_left_vote_maps_to_the_left_file(make_arena, toy_models, left):
    w = make_arena()
    w.draw_order = lambda: left                       # fix the hidden order of this round
    updates = {"left": [], "right": []}
    for side in updates:
        w.panels[side].observe(lambda ch, s=side: updates[s].append(ch["new"]), names="value")
    press_enter(w, "Hello there")
    r = w.current
    assert w.prompt_box.value == "" and r.left == left and r.finished and not r.error
    right = "B" if left == "A" else "A"
    for k, model in zip("AB", toy_models):
        expected, toks = library_answer(model, "Hello there", 4, r.gen_seed)
        assert r.answers[k] == expected and r.tokens[k] == toks, f"file {k}: {r.answers[k]!r} != {expected!r}"
    assert r.answers["A"] != r.answers["B"], "the two toy models should answer differently"
    # the left panel shows the left file's answer, labelled only "Answer 1"; both streamed piece by piece
    assert html.escape(r.answers[left]) in w.panels["left"].value and "Answer 1" in w.panels["left"].value
    assert html.escape(r.answers[right]) in w.panels["right"].value and "Answer 2" in w.panels["right"].value
    for name, _ in w.files.values():
        assert name not in w.panels["left"].value + w.panels["right"].value + w.status.value + w.reveal.value
    assert min(len(updates["left"]), len(updates["right"])) >= 3, {k: len(v) for k, v in updates.items()}
    assert all(not b.disabled for b in w.vote_buttons.values()) and w.awaiting_vote
    w.vote_buttons["left"].click()
    rec = lines(w.votes_path)[-1]
    assert rec["vote"] == left and rec["vote_side"] == "left" and rec["left"] == left
    assert rec["left_file"] == w.files[left][0] == ("tiny-mixtral-f16.gguf" if left == "A" else "tiny-mixtral8-f16.gguf")
    assert rec["answer_a"] == r.answers["A"] and rec["answer_b"] == r.answers["B"] and rec["voter"] == "human"
    assert rec["tokens_a"] == r.tokens["A"] and rec["prompt_tokens"] == r.prompt_tokens
    assert rec["seed"] == 11 and rec["gen_seed"] == r.gen_seed and rec["sampling"]["temperature"] == 0.0
    assert rec["tokens_per_s_a"] > 0 and rec["tokens_per_s_b"] > 0 and rec["started"] <= rec["voted"]
    # revealed after the vote: Answer 1 is the left file
    assert w.reveal.value.index(w.files[left][0]) < w.reveal.value.index(w.files[right][0])
    assert all(b.disabled for b in w.vote_buttons.values()) and not w.awaiting_vote


def test_keyboard_votes_and_rounds_append_lines(make_arena):
    w = make_arena(prompts=["First listed prompt", "第二个提示词"])
    press_enter(w, "")                                  # empty box: the next listed prompt
    assert w.current.prompt == "First listed prompt"
    press_enter(w, "Another prompt")                    # not a vote key: refused until the vote
    assert len(w.rounds) == 1 and "vote first" in w.status.value and w.prompt_box.value == "Another prompt"
    press_enter(w, "2")
    r1 = w.rounds[0]
    w.next_button.click()
    r2 = w.current
    assert r2.prompt == "第二个提示词" and w.next_button.disabled      # the list is used up
    press_enter(w, "=")
    recs = lines(w.votes_path)
    assert [x["prompt"] for x in recs] == ["First listed prompt", "第二个提示词"]
    assert recs[0]["vote"] == r1.right and recs[0]["vote_side"] == "right"
    assert recs[1]["vote"] == "tie" and recs[1]["vote_side"] == "tie" and recs[1]["left"] == r2.left
    assert "第二个提示词" in w.votes_path.read_text(encoding="utf-8")     # UTF-8, not \\u escapes


def test_stop_mid_stream_keeps_a_votable_round(make_arena):
    w = make_arena(threaded=True, max_tokens=200)
    first = threading.Event()
    w.panels["right"].observe(lambda ch: first.set() if w.current and w.current.answers[w.current.right] else None,
                              names="value")
    w.send("Write a very long story")
    assert w.busy and not w.stop_button.disabled and all(b.disabled for b in w.vote_buttons.values())
    assert first.wait(120), "no text streamed within 120 s"
    press_enter(w, "stop")
    w.wait(120)
    r = w.current
    assert not w.busy and r.stop == {"A": "cancelled", "B": "cancelled"}, r.stop
    assert 0 < len(r.tokens["A"]) < 200 and abs(len(r.tokens["A"]) - len(r.tokens["B"])) <= 4
    assert w.stop_button.disabled and w.awaiting_vote and "stopped" in w.status.value
    rec = w.vote("tie")
    assert rec["stop_a"] == rec["stop_b"] == "cancelled"


def test_scripted_voter_plays_the_list(make_arena):
    w = make_arena(prompts=["Hello", "How are you?", "Tell me a joke"])
    recs = w.play(2, voter="longer")
    assert [r["prompt"] for r in recs] == ["Hello", "How are you?"]
    for rec, r in zip(recs, w.rounds):
        n_left, n_right = len(r.answers[r.left]), len(r.answers[r.right])
        assert rec["voter"] == "script:longer"
        assert rec["vote_side"] == ("tie" if n_left == n_right else "left" if n_left > n_right else "right")
    assert lines(w.votes_path) == recs
    assert len(w.play(voter="right")) == 1 and w.play(5) == []


def test_bad_actions_are_refused_with_a_message(make_arena, toy_models):
    from workbench.ui.arena_widget import ArenaError, ArenaWidget

    w = make_arena()
    with pytest.raises(ArenaError, match="no answered round"):
        w.vote("left")
    with pytest.raises(ArenaError, match="unknown sampling parameter"):
        ArenaWidget(*toy_models, temprature=0.5)
    with pytest.raises(ArenaError, match="voter 'loudest'"):
        w.play(1, voter="loudest")
    press_enter(w, "   ")
    assert w.rounds == [] and w.status.value == "type a prompt"
    w.send("Hi")
    with pytest.raises(ArenaError, match="vote 'maybe'"):
        w.vote("maybe")
    w.vote("1")
    with pytest.raises(ArenaError, match="no answered round"):
        w.vote("2")                                     # one vote per round
    assert len(lines(w.votes_path)) == 1


def test_same_model_twice_gets_its_own_cache(toy_models, tmp_path):
    from workbench.ui.arena_widget import ArenaWidget
    w = ArenaWidget(toy_models[0], toy_models[0], votes_path=tmp_path / "v.jsonl", seed=1, threaded=False,
                    max_tokens=3, **GREEDY)
    assert w.models["A"] is not w.models["B"]
    w.send("Hello")
    assert w.current.answers["A"] == w.current.answers["B"] and w.current.tokens["A"]


def binomial_two_sided_p(k: int, n: int) -> float:
    pmf = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[k] * (1 + 1e-9)))


def test_order_is_random_balanced_and_seeded(toy_models):
    from workbench.ui.arena_widget import ArenaWidget

    def draws(seed, n=200):
        w = ArenaWidget(*toy_models, seed=seed, votes_path="unused.jsonl")
        return [w.draw_order() for _ in range(n)]

    d = draws(5)
    n_a = d.count("A")
    assert set(d) == {"A", "B"} and binomial_two_sided_p(n_a, 200) > 0.001, f"{n_a}/200 on the left"
    runs = 1 + sum(x != y for x, y in zip(d, d[1:]))      # not alternating nor clumped: Wald-Wolfowitz bounds
    assert 70 < runs < 130, runs
    assert draws(5) == d and draws(6) != d
    assert binomial_two_sided_p(100, 200) == pytest.approx(1.0) and binomial_two_sided_p(150, 200) < 1e-9


# --- the statistics -----------------------------------------------------------------------------------
def rec(vote, left="A", fa="a.gguf", fb="b.gguf", prompt="p"):
    return {"file_a": fa, "file_b": fb, "left": left, "vote": vote, "prompt": prompt}


def test_wilson_interval_hand_values():
    # 8 of 10: p=0.8, z=1.96 -> (0.4902, 0.9433) (Wilson 1927; e.g. Newcombe 1998, table I)
    assert A.wilson(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-5)
    lo, hi = A.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.38416 / 1.38416, abs=1e-9)      # z^2/n / (1 + z^2/n)
    assert all(math.isnan(x) for x in A.wilson(0, 0))


def test_bradley_terry_hand_values():
    g = [("A", "B", 1.0)] * 2 + [("A", "B", 0.0)]
    assert A.bradley_terry(g) == pytest.approx({"A": 2 / 3, "B": 1 / 3})
    # a chain A>B 2-1, B>C 2-1, no A-C games: the score equations give strengths 4 : 2 : 1
    chain = g + [("B", "C", 1.0)] * 2 + [("B", "C", 0.0)]
    assert A.bradley_terry(chain) == pytest.approx({"A": 4 / 7, "B": 2 / 7, "C": 1 / 7}, abs=1e-9)
    # ties are half a win each: one win each and two ties is even; a win and a tie is 1.5 : 0.5
    assert A.bradley_terry([("A", "B", 1.0), ("A", "B", 0.0), ("A", "B", 0.5), ("A", "B", 0.5)]) == \
        pytest.approx({"A": 0.5, "B": 0.5})
    assert A.bradley_terry([("A", "B", 1.0), ("A", "B", 0.5)]) == pytest.approx({"A": 0.75, "B": 0.25})
    assert A.bradley_terry([("A", "B", 1.0)] * 3) == pytest.approx({"A": 1.0, "B": 0.0})


def test_elo_hand_values():
    # K=32, start 1000: A beats B -> 1016 / 984; then B beats A: E_B = 1/(1 + 10^(32/400)) = 0.454078,
    # B += 32 * 0.545922 = 17.4695
    assert A.elo([("A", "B", 1.0)]) == pytest.approx({"A": 1016.0, "B": 984.0})
    assert A.elo([("A", "B", 1.0), ("A", "B", 0.0)]) == pytest.approx({"A": 998.5305, "B": 1001.4695}, abs=1e-4)
    assert A.elo([("A", "B", 0.5)]) == pytest.approx({"A": 1000.0, "B": 1000.0})


def test_win_table_counts_intervals_and_position_bias():
    records = [rec("A", "A"), rec("A", "B"), rec("B", "B"), rec("tie", "A"), rec("A", "A")]
    df = A.win_table(records, n_boot=300, seed=1)
    a, b, pos = df.loc["a.gguf"], df.loc["b.gguf"], df.loc["position: left"]
    assert (a.games, a.wins, a.losses, a.ties) == (5, 3, 1, 1) and (b.wins, b.losses, b.ties) == (1, 3, 1)
    assert a.win_rate == pytest.approx(3.5 / 5) and (a.win_lo, a.win_hi) == pytest.approx(A.wilson(3.5, 5))
    assert a.bt_strength == pytest.approx(3.5 / 5) and a.elo > 1000 > b.elo
    assert a.bt_lo <= a.bt_strength <= a.bt_hi and a.elo_lo <= a.elo <= a.elo_hi and a.elo_lo < a.elo_hi
    # left won: A-left A, B-left B (vote B with B left), A-left A -> 3 of the 4 decisive votes
    assert (pos.games, pos.wins, pos.losses, pos.ties) == (5, 3, 1, 1) and pos.win_rate == pytest.approx(0.75)
    again = A.win_table(records, n_boot=300, seed=1)
    assert again.equals(df), "the bootstrap is seeded"
    assert A.win_table([]).empty


@pytest.mark.parametrize("line, message", [
    ("not json\n", "line 3: not JSON"),
    ('{"file_a": "a", "file_b": "b", "left": "A", "prompt": "p"}\n', "line 3: missing field 'vote'"),
    ('{"file_a": "a", "file_b": "b", "left": "A", "prompt": "p", "vote": "C"}\n', "line 3: vote 'C'"),
    ('{"file_a": "a", "file_b": "b", "left": "left", "prompt": "p", "vote": "A"}\n', "line 3: left 'left'"),
    ('{"file_a": "a", "file_b": "a", "left": "A", "prompt": "p", "vote": "A"}\n', "line 3: file_a and file_b"),
    ('[1, 2]\n', "line 3: expected a JSON object"),
])
def test_bad_votes_lines_name_the_line(tmp_path, line, message):
    p = tmp_path / "votes.jsonl"
    p.write_text(json.dumps(rec("A")) + "\n\n" + line, encoding="utf-8")
    with pytest.raises(A.ArenaVotesError, match=f"votes.jsonl {message}"):
        A.read_votes(p)
    assert A.read_votes(tmp_path / "none.jsonl") == []


# --- KLD and tasks beside the votes ---------------------------------------------------------------------
def float64_kld(ref_logits, logits):
    lp = ref_logits.astype(np.float64) - np.logaddexp.reduce(ref_logits.astype(np.float64), axis=1, keepdims=True)
    lq = logits.astype(np.float64) - np.logaddexp.reduce(logits.astype(np.float64), axis=1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(1)


def test_arena_kld_matches_a_float64_computation(toy_models):
    a, b = toy_models
    prompt = a.tokenize("<s>[INST] Hello [/INST]")[:8]
    records = [{**rec("A", fa="tiny-mixtral-f16.gguf", fb="tiny-mixtral8-f16.gguf"), "prompt_tokens": prompt,
                "tokens_a": [100, 200, 300], "tokens_b": [400, 500]},
               rec("B", fa="other.gguf", fb="tiny-mixtral8-f16.gguf")]       # another pair: not scored
    seqs = A.scored_sequences(records, "tiny-mixtral-f16.gguf", "tiny-mixtral8-f16.gguf")
    assert seqs == [(prompt + [100, 200, 300], 0), (prompt + [400, 500], len(prompt) - 1)]
    n_rows = len(prompt) + 2 + 2
    rows = [[np.asarray(m.logits(np.array(t), first_output=f))[:len(t) - 1 - f] for t, f in seqs] for m in (a, b)]
    want = {"ab": np.concatenate([float64_kld(ra, rb) for ra, rb in zip(*rows)]).mean(),
            "ba": np.concatenate([float64_kld(rb, ra) for ra, rb in zip(*rows)]).mean()}
    got = A.arena_kld(records, a, b)
    sym = 0.5 * (want["ab"] + want["ba"])
    assert got["tiny-mixtral-f16.gguf"][:2] == pytest.approx((sym, n_rows), rel=2e-3)
    assert got["tiny-mixtral8-f16.gguf"][0] == got["tiny-mixtral-f16.gguf"][0] > 0
    with_ref = A.arena_kld(records, a, b, reference=a)
    assert with_ref["tiny-mixtral-f16.gguf"][0] < 1e-3 * with_ref["tiny-mixtral8-f16.gguf"][0]
    assert with_ref["tiny-mixtral8-f16.gguf"][0] == pytest.approx(want["ab"], rel=2e-3)
    assert with_ref["tiny-mixtral8-f16.gguf"][2] == "tiny-mixtral-f16.gguf"


def test_summary_puts_kld_and_task_accuracy_beside_the_votes(toy_models, tmp_path):
    from workbench.eval import tasks as T
    from workbench.eval.task_files import hellaswag_tasks, sentences
    from workbench.workspace import read_text

    a, b = toy_models
    p = tmp_path / "votes.jsonl"
    r = {**rec("B", "B", fa="tiny-mixtral-f16.gguf", fb="tiny-mixtral8-f16.gguf"),
         "prompt_tokens": a.tokenize("Hi there")[:5], "tokens_a": [7, 8], "tokens_b": [9]}
    p.write_text("\n".join(json.dumps(x) for x in [r, {**r, "vote": "tie"}]) + "\n", encoding="utf-8")
    tasks = hellaswag_tasks(sentences(read_text("en", 20_000)), 2)
    df = A.arena_summary(p, models=[a, b], task=tasks, n_boot=100)
    assert list(df.index) == ["tiny-mixtral-f16.gguf", "tiny-mixtral8-f16.gguf", "position: left"]
    assert df.loc["tiny-mixtral8-f16.gguf", "wins"] == 1 and df.loc["tiny-mixtral8-f16.gguf", "ties"] == 1
    assert df.loc["tiny-mixtral-f16.gguf", "kld_rows"] == 2 * (len(r["prompt_tokens"]) + 2) and df.loc["tiny-mixtral-f16.gguf", "kld_mean"] > 0
    for m, name in zip((a, b), ("tiny-mixtral-f16.gguf", "tiny-mixtral8-f16.gguf")):
        assert df.loc[name, "task_acc"] == T.hellaswag_score(m, tasks).accuracy
    assert np.isnan(df.loc["position: left", "kld_mean"])


def test_arena_files_reuse_the_model_and_requantize_the_rest(toy_paths, tmp_path):
    src = toy_paths[0]
    assert A.file_type_name(src) == "F16"
    same, q8 = A.arena_files(src, ["F16", "Q8_0"], out_dir=tmp_path)
    assert same == src and q8 == tmp_path / "tiny-mixtral-f16.Q8_0.gguf" and A.file_type_name(q8) == "Q8_0"
    mtime = q8.stat().st_mtime_ns
    assert A.arena_files(src, ["Q8_0"], out_dir=tmp_path) == [q8] and q8.stat().st_mtime_ns == mtime  # cached
