"""An ipywidgets chat for JupyterLab 4 / ipywidgets 8: streaming transcript, send / stop / clear, system
prompt, chat-template selector, sampling controls and tokens/s.

    from workbench.ui import ChatWidget
    ChatWidget(model)          # displays itself in a notebook
    ChatWidget(model, grammar=Grammar.from_json_schema(schema))   # every answer is JSON of that schema

Generation runs in a background thread so the kernel stays responsive (Stop works mid-stream);
`threaded=False` runs it inline, which is what headless tests use.
"""
from __future__ import annotations

import html
import threading

import ipywidgets as W

from workbench.llama.generate import chat
from workbench.text.grammar import Grammar

TEMPLATES = [("from GGUF", "gguf"), ("ChatML", "chatml"), ("llama-2", "llama2"), ("llama-3", "llama3"),
             ("Mistral / Mixtral", "mistral")]


class ChatWidget(W.VBox):
    def __init__(self, model, system_prompt: str = "You are a helpful assistant.", threaded: bool = True,
                 grammar: Grammar | None = None, **kwargs):
        self.model = model
        self.grammar = grammar  # constrains every answer (workbench.text.grammar.Grammar), None: free text
        self.threaded = threaded
        self.history: list[dict] = []
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_stats = None

        self.transcript = W.HTML(value="", layout=W.Layout(border="1px solid #ccc", padding="6px", min_height="240px",
                                                           max_height="480px", overflow="auto", width="100%"))
        self.message = W.Textarea(placeholder="Type a message… / 输入消息…", layout=W.Layout(width="100%", height="64px"))
        self.send_button = W.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = W.Button(description="Stop", button_style="warning", icon="stop", disabled=True)
        self.clear_button = W.Button(description="Clear", icon="trash")
        self.system = W.Textarea(value=system_prompt, description="System", layout=W.Layout(width="100%", height="48px"))
        self.template = W.Dropdown(options=TEMPLATES, value="gguf", description="Template")
        self.temperature = W.FloatSlider(value=0.8, min=0.0, max=2.0, step=0.05, description="temp")
        self.top_k = W.IntSlider(value=40, min=0, max=200, description="top_k")
        self.top_p = W.FloatSlider(value=0.95, min=0.0, max=1.0, step=0.01, description="top_p")
        self.min_p = W.FloatSlider(value=0.05, min=0.0, max=1.0, step=0.01, description="min_p")
        self.repeat_penalty = W.FloatSlider(value=1.0, min=0.5, max=2.0, step=0.05, description="repeat")
        self.max_tokens = W.IntSlider(value=256, min=1, max=2048, description="max tokens")
        self.status = W.Label(value="ready")

        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.clear())
        controls = W.VBox([self.template, self.temperature, self.top_k, self.top_p, self.min_p, self.repeat_penalty,
                           self.max_tokens])
        settings = W.Accordion(children=[W.VBox([self.system, controls])])
        settings.set_title(0, "Settings")
        super().__init__([self.transcript, self.message,
                          W.HBox([self.send_button, self.stop_button, self.clear_button, self.status]), settings],
                         **kwargs)

    # --- actions ----------------------------------------------------------------------------------
    def sampling(self) -> dict:
        return {"temperature": self.temperature.value, "top_k": self.top_k.value, "top_p": self.top_p.value,
                "min_p": self.min_p.value, "repeat_penalty": self.repeat_penalty.value}

    def send(self, text: str | None = None) -> None:
        text = (self.message.value if text is None else text).strip()
        if not text or self.busy:
            return
        self.message.value = ""
        self.history.append({"role": "user", "content": text})
        self.history.append({"role": "assistant", "content": ""})
        self._render()
        self._cancel.clear()
        self._set_busy(True)
        if self.threaded:
            self._thread = threading.Thread(target=self._generate, daemon=True)
            self._thread.start()
        else:
            self._generate()

    def stop(self) -> None:
        self._cancel.set()

    def clear(self) -> None:
        self.stop()
        self.wait()
        self.history.clear()
        self.model.reset()
        self.model._chat_history = None
        self.status.value = "cleared"
        self._render()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current answer is finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- internals --------------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        sys_msg = [{"role": "system", "content": self.system.value}] if self.system.value.strip() else []
        return sys_msg + self.history[:-1]

    def _generate(self) -> None:
        try:
            for ev in chat(self.model, self.messages(), template=self.template.value, stream=True,
                           max_tokens=self.max_tokens.value, cancel=self._cancel, grammar=self.grammar,
                           **self.sampling()):
                if ev.done:
                    t = ev.timings
                    self.last_stats = ev
                    self.status.value = (f"{t.predicted_n} tokens, {t.predicted_per_second:.1f} tok/s "
                                         f"(prompt {t.prompt_per_second:.1f} tok/s)"
                                         + (" — stopped" if ev.stop_type == "cancelled" else ""))
                else:
                    with self._lock:
                        self.history[-1]["content"] += ev.text
                    self._render()
        except Exception as e:  # shown to the user, never a dead widget
            self.status.value = f"error: {e}"
        finally:
            self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy
        if busy:
            self.status.value = "generating…"

    def _render(self) -> None:
        rows = []
        for m in self.history:
            who = {"user": "You", "assistant": "Assistant"}.get(m["role"], m["role"])
            color = "#1f6feb" if m["role"] == "user" else "#2da44e"
            body = html.escape(m["content"]).replace("\n", "<br>")
            rows.append(f'<div style="margin:4px 0"><b style="color:{color}">{who}:</b> {body}</div>')
        self.transcript.value = "".join(rows)
