"""A blind A/B arena for two files of one model (e.g. two quantizations): each round both answer the same prompt
with the same chat template, sampling parameters and seed, streamed side by side as "Answer 1" / "Answer 2" in
an order drawn at random per round; the user votes (Answer 1 / tie / Answer 2), then the files are revealed.
Each vote is appended as one JSON line (default: data/arena/votes.jsonl; workbench.eval.arena reads them).

    from workbench.ui import ArenaWidget
    ArenaWidget(workbench.load(a), workbench.load(b), prompts=["Why is the sky blue?"], seed=1)

Keyboard: Enter in the prompt box sends (an empty box: the next listed prompt); once both answers are done,
"1", "2" or "=" and Enter votes; Tab reaches every button (Space / Enter presses it).

The two answers are generated in one background thread, a piece of each in turn (llama-server would run two
slots the same way), so both appear at the same pace and the kernel stays responsive; `threaded=False` runs
inline (headless tests). Tokens/s per file is timed from the time spent in that file's own generator.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ipywidgets as W
import numpy as np

from workbench.assets import data_dir
from workbench.llama.generate import chat
from workbench.llama.sampling import SamplingParams
from workbench.text.chat import render_chat

VOTE_KEYS = {"1": "left", "left": "left", "2": "right", "right": "right", "=": "tie", "0": "tie", "tie": "tie"}
VOTERS = ("left", "right", "tie", "longer", "shorter", "random")     # scripted voters of play()
KEY_HELP = ("<b>Keys</b>: type a prompt, <kbd>Enter</kbd> sends (empty box: the next listed prompt). When both "
            "answers are done type <kbd>1</kbd>, <kbd>2</kbd> or <kbd>=</kbd> (tie) and <kbd>Enter</kbd> to vote, "
            "or <kbd>Tab</kbd> to a button and press <kbd>Space</kbd>. <kbd>stop</kbd> + <kbd>Enter</kbd> stops.")


class ArenaError(ValueError):
    """A vote or setting the arena cannot take (no round to vote on, unknown vote or voter, bad sampling)."""


def default_votes_path() -> Path:
    """data/arena/votes.jsonl under workbench.assets.data_dir()."""
    return data_dir() / "arena" / "votes.jsonl"


def model_file(model) -> tuple[str, str]:
    """(file name, full path) of a loaded model ("?" for one not read from a file)."""
    path = getattr(getattr(model, "gguf", None), "path", None)
    return (Path(path).name, str(Path(path).resolve())) if path else ("?", "")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Round:
    """One prompt, both answers, the hidden order and (once given) the vote."""

    index: int
    prompt: str
    left: str                          # "A" or "B": the file shown as Answer 1 (drawn at random)
    gen_seed: int                      # the sampling seed both files used
    started: str
    prompt_tokens: list = field(default_factory=list)
    answers: dict = field(default_factory=lambda: {"A": "", "B": ""})
    tokens: dict = field(default_factory=lambda: {"A": [], "B": []})
    stop: dict = field(default_factory=dict)              # "eos", "word", "limit", "cancelled"
    tokens_per_s: dict = field(default_factory=dict)      # generation, timed in each file's own generator
    prompt_per_s: dict = field(default_factory=dict)
    finished: str = ""
    error: str = ""
    vote: str = ""                     # "A", "B" or "tie"
    voted: str = ""

    @property
    def right(self) -> str:
        return "B" if self.left == "A" else "A"

    def file_of(self, side: str) -> str:
        """"left"/"right" -> "A"/"B"."""
        return self.left if side == "left" else self.right


class ArenaWidget(W.VBox):
    def __init__(self, model_a, model_b, prompts=None, votes_path=None, seed: int | None = None,
                 system_prompt: str = "", template: str = "gguf", max_tokens: int = 128, threaded: bool = True,
                 **sampling):
        try:
            SamplingParams(**sampling)
        except TypeError as e:
            raise ArenaError(f"unknown sampling parameter: {e} (SamplingParams fields: "
                             f"{', '.join(SamplingParams.__dataclass_fields__)})") from None
        if max_tokens < 1:
            raise ArenaError(f"max_tokens must be >= 1, got {max_tokens}")
        # the same Model object twice would share one KV cache between the two interleaved generators
        self.models = {"A": model_a, "B": model_b.fork() if model_b is model_a else model_b}
        self.files = {k: model_file(m) for k, m in self.models.items()}
        self.prompts = [str(p) for p in (prompts or [])]
        self.votes_path = Path(votes_path) if votes_path is not None else default_votes_path()
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        # one stream for the left/right order, one for the sampling seeds, one for the scripted "random" voter
        order_ss, gen_ss, voter_ss = np.random.SeedSequence(self.seed).spawn(3)
        self._order_rng = np.random.default_rng(order_ss)
        self._gen_rng = np.random.default_rng(gen_ss)
        self._voter_rng = np.random.default_rng(voter_ss)
        self.system_prompt, self.template, self.max_tokens = system_prompt, template, int(max_tokens)
        self.sampling = dict(sampling)
        self.threaded = threaded
        self.rounds: list[Round] = []
        self._next_prompt = 0
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

        self.help = W.HTML(value=KEY_HELP)
        self.prompt_box = W.Text(placeholder="Type a prompt, Enter sends… / 输入提示词，回车发送…",
                                 layout=W.Layout(width="100%"))
        self.prompt_box.add_class("wb-arena-prompt")
        self.prompt_box.on_msg(self._on_box_msg)
        self.send_button = self._button("Send", "Send the prompt to both files (Enter in the box)", "primary",
                                        "paper-plane", self.send)
        self.next_button = self._button("Next prompt", "Send the next prompt of the list", "", "forward",
                                        self.next_prompt, disabled=not self.prompts)
        self.stop_button = self._button("Stop", "Stop both answers (type stop + Enter)", "warning", "stop",
                                        self.stop, disabled=True)
        self.vote_buttons = {
            "left": self._button("Answer 1 is better", "Vote for Answer 1 (key: 1 then Enter in the prompt box)",
                                 "success", "arrow-left", lambda: self.vote("left"), disabled=True),
            "tie": self._button("Tie", "Both equally good or bad (key: = then Enter)", "info", "",
                                lambda: self.vote("tie"), disabled=True),
            "right": self._button("Answer 2 is better", "Vote for Answer 2 (key: 2 then Enter)", "success",
                                  "arrow-right", lambda: self.vote("right"), disabled=True),
        }
        for side, b in self.vote_buttons.items():
            b.add_class(f"wb-arena-vote-{side}")
        box = dict(border="1px solid #ccc", padding="6px", min_height="160px", max_height="420px", overflow="auto",
                   width="50%")
        self.panels = {side: W.HTML(layout=W.Layout(**box)) for side in ("left", "right")}
        for side, p in self.panels.items():
            p.add_class(f"wb-arena-answer-{side}")
        self.reveal = W.HTML(value="")
        self.reveal.add_class("wb-arena-reveal")
        self.status = W.Label(value="ready")
        self.status.add_class("wb-arena-status")
        self._render()
        super().__init__([self.help, self.prompt_box,
                          W.HBox([self.send_button, self.next_button, self.stop_button, self.status]),
                          W.HBox([self.panels["left"], self.panels["right"]]),
                          W.HBox(list(self.vote_buttons.values())), self.reveal])

    def _button(self, text, tooltip, style, icon, action, disabled=False) -> W.Button:
        b = W.Button(description=text, tooltip=tooltip, button_style=style, icon=icon, disabled=disabled,
                     layout=W.Layout(width="auto"))
        b.on_click(lambda _: action())
        return b

    # --- the hidden order ---------------------------------------------------------------------------
    def draw_order(self) -> str:
        """The file shown on the left ("A" or "B"), from the widget's seeded generator: a fair coin per round."""
        return "A" if self._order_rng.integers(2) == 0 else "B"

    # --- actions ------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def current(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None

    @property
    def awaiting_vote(self) -> bool:
        r = self.current
        return r is not None and bool(r.finished) and not r.vote and not r.error and not self.busy

    def send(self, text: str | None = None) -> Round | None:
        """Start a round with `text` (default: the prompt box, or the next listed prompt when it is empty)."""
        text = (self.prompt_box.value if text is None else text).strip()
        if self.busy:
            self.status.value = "generating… (Stop, or type stop + Enter)"
            return None
        if self.awaiting_vote:
            self.status.value = "vote first: 1 = Answer 1, 2 = Answer 2, = tie"
            return None
        if not text:
            if self._next_prompt >= len(self.prompts):
                self.status.value = "type a prompt" + (" (the list is used up)" if self.prompts else "")
                return None
            text = self.prompts[self._next_prompt]
            self._next_prompt += 1
        self.prompt_box.value = ""
        r = Round(index=len(self.rounds), prompt=text, left=self.draw_order(),
                  gen_seed=int(self._gen_rng.integers(0, 0xFFFFFFFF)), started=now())
        self.rounds.append(r)
        self.reveal.value = ""
        self._cancel.clear()
        self._set_busy(True)
        self._render()
        if self.threaded:
            self._thread = threading.Thread(target=self._generate, args=(r,), daemon=True)
            self._thread.start()
        else:
            self._generate(r)
        return r

    def next_prompt(self) -> Round | None:
        """Send the next prompt of the list (whatever is typed in the box stays there)."""
        if self._next_prompt >= len(self.prompts):
            self.status.value = "the prompt list is used up: type a prompt"
            return None
        if self.busy or self.awaiting_vote:
            return self.send()  # only says why not
        self._next_prompt += 1
        return self.send(self.prompts[self._next_prompt - 1])

    def stop(self) -> None:
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current round's answers are finished (scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def vote(self, choice: str, voter: str = "human") -> dict:
        """Vote "left" / "right" / "tie" (or "1" / "2" / "="): append the record, reveal the files."""
        side = VOTE_KEYS.get(str(choice).strip().lower())
        if side is None:
            raise ArenaError(f"vote {choice!r}: give left / right / tie (or 1 / 2 / =)")
        if not self.awaiting_vote:
            raise ArenaError("no answered round to vote on: send a prompt and wait for both answers")
        r = self.current
        r.vote, r.voted = ("tie" if side == "tie" else r.file_of(side)), now()
        rec = self.record(r, voter=voter)
        self.votes_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.votes_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._set_vote_buttons(False)
        self._reveal(r)
        self.status.value = f"vote saved to {self.votes_path.name} ({len(self.voted_rounds())} this session)"
        return rec

    def play(self, n_rounds: int | None = None, voter: str = "longer") -> list[dict]:
        """Play the next `n_rounds` listed prompts (all that are left: None) with a scripted voter: "left",
        "right", "tie", "longer" / "shorter" (the answer with more / fewer characters; equal: tie) or "random"
        (seeded). Records say voter "script:<name>". For headless notebook runs and tests."""
        if voter not in VOTERS:
            raise ArenaError(f"voter {voter!r}: one of {', '.join(VOTERS)}")
        left = len(self.prompts) - self._next_prompt
        n = left if n_rounds is None else min(int(n_rounds), left)
        records = []
        for _ in range(n):
            r = self.next_prompt()
            self.wait()
            if r is None or not self.awaiting_vote:
                break
            records.append(self.vote(self._scripted_choice(r, voter), voter=f"script:{voter}"))
        return records

    # --- records ------------------------------------------------------------------------------------
    def voted_rounds(self) -> list[Round]:
        return [r for r in self.rounds if r.vote]

    def record(self, r: Round, voter: str = "human") -> dict:
        """The JSON line of a voted round (workbench.eval.arena.read_votes reads it)."""
        return {"version": 1, "round": r.index, "prompt": r.prompt, "system": self.system_prompt,
                "template": self.template, "file_a": self.files["A"][0], "file_b": self.files["B"][0],
                "path_a": self.files["A"][1], "path_b": self.files["B"][1], "left": r.left,
                "left_file": self.files[r.left][0], "vote": r.vote,
                "vote_side": "tie" if r.vote == "tie" else ("left" if r.vote == r.left else "right"),
                "voter": voter, "answer_a": r.answers["A"], "answer_b": r.answers["B"],
                "prompt_tokens": r.prompt_tokens, "tokens_a": r.tokens["A"], "tokens_b": r.tokens["B"],
                "stop_a": r.stop.get("A", ""), "stop_b": r.stop.get("B", ""),
                "tokens_per_s_a": r.tokens_per_s.get("A"), "tokens_per_s_b": r.tokens_per_s.get("B"),
                "prompt_per_s_a": r.prompt_per_s.get("A"), "prompt_per_s_b": r.prompt_per_s.get("B"),
                "seed": self.seed, "gen_seed": r.gen_seed, "max_tokens": self.max_tokens,
                "sampling": asdict(SamplingParams(**self.sampling)), "started": r.started, "finished": r.finished,
                "voted": r.voted}

    # --- internals ----------------------------------------------------------------------------------
    def _on_box_msg(self, _widget, content, _buffers) -> None:
        """Enter in the prompt box (ipywidgets' Text view sends {"event": "submit"})."""
        if content.get("event") == "submit":
            self.submit()

    def submit(self) -> None:
        """What Enter in the prompt box does: stop / vote keys when they apply, else send."""
        text = self.prompt_box.value.strip()
        if self.busy and text.lower() == "stop":
            self.prompt_box.value = ""
            self.stop()
        elif self.awaiting_vote and text.lower() in VOTE_KEYS:
            self.prompt_box.value = ""
            self.vote(text)
        else:
            self.send()

    def _messages(self, prompt: str) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return sys_msg + [{"role": "user", "content": prompt}]

    def _generate(self, r: Round) -> None:
        try:
            msgs = self._messages(r.prompt)
            m = self.models["A"]
            r.prompt_tokens = [int(t) for t in m.tokenizer.tokenize(
                render_chat(msgs, self.template, metadata=m.gguf.metadata), add_special=True, parse_special=True)]
            streams = {k: chat(model, msgs, template=self.template, stream=True, max_tokens=self.max_tokens,
                               seed=r.gen_seed, cancel=self._cancel, **self.sampling)
                       for k, model in self.models.items()}
            spent = {"A": 0.0, "B": 0.0}
            order = [r.left, r.right]          # the left answer's piece first, then the right one's, in turn
            while streams:
                for k in [k for k in order if k in streams]:
                    t0 = time.perf_counter()
                    ev = next(streams[k], None)
                    spent[k] += time.perf_counter() - t0
                    if ev is None:
                        del streams[k]
                    elif ev.done:
                        t = ev.timings
                        r.tokens[k], r.stop[k] = [int(x) for x in ev.tokens], ev.stop_type
                        gen_s = spent[k] - t.prompt_ms / 1e3
                        r.tokens_per_s[k] = t.predicted_n / gen_s if gen_s > 0 and t.predicted_n else 0.0
                        r.prompt_per_s[k] = t.prompt_per_second
                    else:
                        with self._lock:
                            r.answers[k] += ev.text
                        self._render()
            r.finished = now()
            stopped = "cancelled" in r.stop.values()
            self.status.value = ("stopped: vote on what was written, or skip by voting tie" if stopped
                                 else "vote: which answer is better? (1 / 2 / =)")
        except Exception as e:  # shown to the user, never a dead widget; the round cannot be voted on
            r.error = f"{type(e).__name__}: {e}"
            self.status.value = f"error: {e}"
        finally:
            self._set_busy(False, votable=not r.error)
            self._render()

    def _set_busy(self, busy: bool, votable: bool = False) -> None:
        self.send_button.disabled = busy
        self.next_button.disabled = busy or self._next_prompt >= len(self.prompts)
        self.stop_button.disabled = not busy
        self._set_vote_buttons(not busy and votable)
        if busy:
            self.status.value = "generating…"

    def _set_vote_buttons(self, enabled: bool) -> None:
        for b in self.vote_buttons.values():
            b.disabled = not enabled

    def _scripted_choice(self, r: Round, voter: str) -> str:
        if voter in ("left", "right", "tie"):
            return voter
        if voter == "random":
            return ("left", "tie", "right")[int(self._voter_rng.integers(3))]
        n_left, n_right = len(r.answers[r.left]), len(r.answers[r.right])
        if n_left == n_right:
            return "tie"
        return "left" if (n_left > n_right) == (voter == "longer") else "right"

    def _render(self) -> None:
        r = self.current
        for i, side in enumerate(("left", "right"), 1):
            body = ""
            if r is not None:
                with self._lock:
                    text = r.answers[r.file_of(side)]
                body = (f'<div style="color:#57606a;margin-bottom:4px">{html.escape(r.prompt)}</div>'
                        + html.escape(text).replace("\n", "<br>"))
            self.panels[side].value = f'<b>Answer {i}</b><div>{body}</div>'

    def _reveal(self, r: Round) -> None:
        def who(side):
            k = r.file_of(side)
            return (f"<b>{html.escape(self.files[k][0])}</b> (file {k}, {r.tokens_per_s.get(k, 0):.1f} tok/s, "
                    f"{len(r.tokens[k])} tokens, {r.stop.get(k, '')})")

        picked = {"tie": "a tie"}.get(r.vote, f"file {r.vote}")
        voted = [x.vote for x in self.voted_rounds()]
        tally = f"A {voted.count('A')} · B {voted.count('B')} · ties {voted.count('tie')}"
        self.reveal.value = (f"Answer 1 was {who('left')}; Answer 2 was {who('right')}. "
                             f"Your vote: {picked}. Session: {tally}.")
