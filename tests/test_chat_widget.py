"""The chat widget without a browser: simulated clicks on a tiny model (the toy Mixtral, fast), streaming into
the transcript, stop mid-stream, clear, template switch, tokens/s in the status line."""
from __future__ import annotations

import html
import re
import threading

import pytest

pytest.importorskip("ipywidgets")

GREEDY = dict(temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def toy_path(toy_dir):
    return toy_dir / "tiny-mixtral-f16.gguf"


@pytest.fixture()
def make_widget(toy_path):
    import workbench
    from workbench.ui import ChatWidget

    made = []

    def make(threaded=False, max_tokens=12, template="gguf", n_ctx=512):
        w = ChatWidget(workbench.load(toy_path, n_ctx=n_ctx), system_prompt="", threaded=threaded)
        w.temperature.value = 0.0          # greedy: the answer is a function of the prompt
        w.max_tokens.value = max_tokens
        w.template.value = template
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()
        w.wait(30)


def reference_answer(toy_path, messages, template, max_tokens):
    """What the same model answers through the library (no widget), greedy."""
    import workbench
    from workbench.llama.generate import chat

    text, final = chat(workbench.load(toy_path, n_ctx=512), messages, template=template, stream=False,
                       max_tokens=max_tokens, **GREEDY)
    return text, final


def transcript_updates(w) -> list[str]:
    seen = []
    w.transcript.observe(lambda ch: seen.append(ch["new"]), names="value")
    return seen


def test_send_click_streams_the_answer_into_the_transcript(make_widget, toy_path):
    w = make_widget(max_tokens=12)
    seen = transcript_updates(w)
    w.message.value = "Hello, who are you?"
    w.send_button.click()
    assert w.message.value == "", "the input box is emptied on send"
    assert [m["role"] for m in w.history] == ["user", "assistant"]
    answer = w.history[-1]["content"]
    expected, final = reference_answer(toy_path, [{"role": "user", "content": "Hello, who are you?"}], "gguf", 12)
    assert answer == expected, f"widget answer {answer!r} != library answer {expected!r}"
    assert final.timings.predicted_n > 1
    # streaming: the transcript grew piece by piece (one update for the user turn, then one per text piece)
    growing = [s for s in seen if "Assistant:" in s]
    assert len(growing) >= 3, f"only {len(growing)} transcript updates: not streamed"
    assert all(len(a) <= len(b) for a, b in zip(growing, growing[1:]))
    assert html.escape(answer).replace("\n", "<br>") in w.transcript.value
    assert "You:" in w.transcript.value and "Hello, who are you?" in w.transcript.value
    assert not w.send_button.disabled and w.stop_button.disabled


def test_status_shows_tokens_per_second(make_widget):
    w = make_widget(max_tokens=8)
    w.send("Tell me a story")
    m = re.match(r"(\d+) tokens, ([\d.]+) tok/s \(prompt ([\d.]+) tok/s\)", w.status.value)
    assert m, f"status is {w.status.value!r}"
    assert int(m.group(1)) == w.last_stats.timings.predicted_n and float(m.group(2)) > 0


def test_second_turn_keeps_the_history(make_widget):
    w = make_widget(max_tokens=6)
    w.send("First question")
    w.send("Second question")
    assert [m["role"] for m in w.history] == ["user", "assistant", "user", "assistant"]
    assert w.history[2]["content"] == "Second question" and w.history[3]["content"]
    assert w.transcript.value.count("You:") == 2


def test_empty_message_is_ignored(make_widget):
    w = make_widget()
    w.message.value = "   "
    w.send_button.click()
    assert w.history == [] and w.transcript.value == "" and w.status.value == "ready"


def test_stop_click_interrupts_a_threaded_answer(make_widget):
    w = make_widget(threaded=True, max_tokens=400)
    first_piece = threading.Event()
    w.transcript.observe(lambda ch: first_piece.set() if w.history and w.history[-1]["content"] else None,
                         names="value")
    w.message.value = "Write a very long text"
    w.send_button.click()
    assert w.busy and w.send_button.disabled and not w.stop_button.disabled
    assert first_piece.wait(60), "no text streamed within 60 s"
    w.stop_button.click()
    w.wait(60)
    assert not w.busy
    assert w.last_stats is not None and w.last_stats.stop_type == "cancelled", w.status.value
    assert w.last_stats.timings.predicted_n < 400
    assert w.status.value.endswith("stopped")
    assert not w.send_button.disabled and w.stop_button.disabled


def test_clear_click_forgets_everything(make_widget):
    w = make_widget(max_tokens=6)
    w.send("Hello")
    assert w.model.n_past > 0
    w.clear_button.click()
    assert w.history == [] and w.transcript.value == "" and w.status.value == "cleared"
    assert w.model.n_past == 0


def test_template_change_is_used(make_widget, toy_path):
    w = make_widget(max_tokens=8)
    w.template.value = "chatml"
    w.send("Hello")
    expected, final = reference_answer(toy_path, [{"role": "user", "content": "Hello"}], "chatml", 8)
    assert w.history[-1]["content"] == expected
    mistral, mfinal = reference_answer(toy_path, [{"role": "user", "content": "Hello"}], "gguf", 8)
    # the ChatML prompt (<|im_start|>user ...) is longer than the Mistral one ([INST] Hello [/INST])
    assert w.last_stats.timings.prompt_n == final.timings.prompt_n != mfinal.timings.prompt_n


def test_errors_show_in_the_status_not_as_a_dead_widget(make_widget):
    w = make_widget(max_tokens=4, n_ctx=16)
    w.send("word " * 40)  # longer than the context
    assert w.status.value.startswith("error:"), w.status.value
    assert not w.send_button.disabled
