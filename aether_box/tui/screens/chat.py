"""The chat pane: talk to a model on the box, its reply streamed token by token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from aether_box.client import BoxError
from aether_box.tui.view import fmt_float

__all__ = ["ChatScreen"]


class ChatScreen(ModalScreen[None]):
    """A multi-turn chat with one model through the `llm` service (op chat, stream=true)."""

    reply_text: reactive[str] = reactive("", init=False)
    """The reply being streamed, as far as it has come (watchable)."""

    BINDINGS = [
        Binding("escape", "close", "Back to the dashboard (stops a reply in progress)"),
        Binding("ctrl+l", "clear", "Start a new conversation"),
    ]
    DEFAULT_CSS = """
    ChatScreen { align: center middle; }
    ChatScreen > Vertical {
        width: 90%; height: 90%; border: thick $primary; background: $surface; padding: 0 1;
    }
    ChatScreen Horizontal { height: auto; }
    ChatScreen Label { padding: 1 1 0 0; }
    ChatScreen #chat-model { width: 30; }
    ChatScreen #chat-log { height: 1fr; border: round $primary-darken-2; }
    ChatScreen .you { color: $accent; padding: 0 0 0 0; }
    ChatScreen .reply { padding: 0 0 1 0; }
    ChatScreen #chat-status { height: 1; color: $text-muted; }
    """

    def __init__(
        self,
        link: Any,
        model: str,
        *,
        options: dict[str, Any] | None = None,
        on_speed: Callable[[str, float], None] | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        super().__init__()
        self.link = link
        self.model = model
        self.options = {"max_tokens": 256, "temperature": 0.7, **(options or {})}
        self.on_speed = on_speed
        self.timeout_s = timeout_s
        self.messages: list[dict[str, str]] = []
        self.partials = 0  # tokens received in the current reply
        self.last_final: dict[str, Any] | None = None
        self.busy = False
        self._reply: Static | None = None
        self._reply_model = model

    def watch_reply_text(self, text: str) -> None:
        if self._reply is not None:
            self._reply.update(Text(f"{self._reply_model}: {text}"))

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("[b]chat[/b]  Enter sends · Esc returns · Ctrl+L starts over")
            with Horizontal():
                yield Label("model")
                yield Input(value=self.model, id="chat-model")
            yield VerticalScroll(id="chat-log")
            yield Input(placeholder="say something…", id="chat-input")
            yield Static("", id="chat-status", markup=False)  # it names models

    def on_mount(self) -> None:
        self.query_one("#chat-input", Input).focus()

    def _status(self, text: str) -> None:
        self.query_one("#chat-status", Static).update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "chat-model":
            self.query_one("#chat-input", Input).focus()
            return
        text = event.value.strip()
        if not text:
            return
        if self.busy:
            self._status("wait for the reply to finish (or Esc to stop it)")
            return
        event.input.value = ""
        self.ask(text)

    @work(exclusive=True, group="chat")
    async def ask(self, text: str) -> None:
        """Send `text` and stream the reply into the log."""
        model = self.query_one("#chat-model", Input).value.strip() or self.model
        log = self.query_one("#chat-log", VerticalScroll)
        await log.mount(Static(Text(f"you: {text}"), classes="you"))
        reply = Static(Text(f"{model}: …"), classes="reply")
        await log.mount(reply)
        self._reply, self._reply_model = reply, model
        self.last_final = None
        self.set_reactive(ChatScreen.reply_text, "")  # a new reply: no watcher call yet
        self.messages.append({"role": "user", "content": text})
        body = {
            "op": "chat",
            "model": model,
            "messages": list(self.messages),
            "stream": True,
            **self.options,
        }
        pieces: list[str] = []
        self.partials = 0
        self.busy = True
        self._status(f"{model} is thinking…")
        try:
            async for part in self.link.stream("llm", body, timeout=self.timeout_s):
                if "token" in part and "text" not in part:
                    pieces.append(str(part["token"]))
                    self.partials += 1
                    self.reply_text = "".join(pieces)  # the watcher shows it
                    log.scroll_end(animate=False)
                    self._status(f"{model}: {self.partials} tokens…")
                else:
                    self.last_final = part
        except BoxError as exc:
            self.messages.pop()
            reply.update(Text(f"error: {exc.message}", style="bold red"))
            self._status("the request failed; fix it and try again")
            return
        finally:
            self.busy = False
        final = self.last_final or {}
        answer = str(final.get("text", "".join(pieces)))
        self.reply_text = answer
        self.messages.append({"role": "assistant", "content": answer})
        usage = final.get("usage") or {}
        tps = final.get("tokens_per_s")
        self._status(
            f"{usage.get('completion_tokens', self.partials)} tokens · {fmt_float(tps)} tok/s · "
            f"finish: {final.get('finish_reason', '-')}"
        )
        if self.on_speed is not None and isinstance(tps, int | float):
            self.on_speed(model, float(tps))

    def action_clear(self) -> None:
        self.workers.cancel_group(self, "chat")
        self.messages.clear()
        self.query_one("#chat-log", VerticalScroll).remove_children()
        self._status("new conversation")

    def action_close(self) -> None:
        self.workers.cancel_group(self, "chat")  # closing stops generation on the box too
        self.dismiss(None)
