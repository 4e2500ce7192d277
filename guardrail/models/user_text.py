"""User text checked before it enters a model's chat template.

A request is one user turn. Text holding the tokenizer's control tokens (role markers such as
`<|im_start|>`, `<|start_header_id|>`, `[INST]`, audio placeholders) would become real special tokens and
forge turns: a system prompt, a pre-filled answer. The policy's `input.special_tokens` chooses: "refuse"
(a RequestError naming the marker) or "escape" (a zero-width joiner after the marker's first character, so
that the marker reads the same but tokenizes as plain text). Either way the text is then tokenized alone
and must yield no control token id: what the tokenizer really does decides, not a list of known markers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from guardrail.errors import RequestError

__all__ = ["ESCAPE", "ControlTokens", "SpecialTokens", "require_valid_unicode"]

SpecialTokens = Literal["refuse", "escape"]

ESCAPE = "\u200d"  # zero-width joiner: invisible, and no tokenizer's control token contains it
_MAX_ESCAPE_ROUNDS = 4  # escaping one marker cannot reveal another unless markers overlap oddly

_REMEDY = "remove it, or set the policy's input.special_tokens: escape to pass such markers as plain text"


def require_valid_unicode(text: str, index: int) -> None:
    """RequestError for text that is not a str or cannot be encoded as UTF-8 (a lone surrogate)."""
    if not isinstance(text, str):
        raise RequestError(f"request {index}: text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(
            f"request {index}: text is not valid Unicode: {exc.reason} at position {exc.start} "
            f"({text[exc.start]!r}); pass text that encodes as UTF-8 (decode bytes with errors='replace')"
        ) from None


@dataclass(frozen=True)
class ControlTokens:
    """The strings a tokenizer (and its processor) turns into control tokens, and their ids."""

    strings: tuple[str, ...]  # longest first
    ids: frozenset[int]
    tokenizer: Any

    @classmethod
    def of(cls, tokenizer: Any, processor: Any = None, extra: Iterable[str | None] = ()) -> ControlTokens:
        """From the tokenizer's added and special tokens, the processor's `*_token` placeholders and `extra`."""
        strings: set[str] = {t for t in extra if t}
        ids: set[int] = set()
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        for token_id, token in added.items():
            content = str(getattr(token, "content", token))
            # special ones, and non-special markup such as Qwen's <tool_call>; not added plain words
            if getattr(token, "special", True) or _looks_like_markup(content):
                strings.add(content)
                ids.add(int(token_id))
        strings.update(str(t) for t in getattr(tokenizer, "all_special_tokens", None) or ())
        ids.update(int(i) for i in getattr(tokenizer, "all_special_ids", None) or ())
        for owner in (processor, tokenizer):
            strings.update(
                v for k, v in getattr(owner, "__dict__", {}).items() if k.endswith("_token") and isinstance(v, str)
            )
        kept = sorted((s for s in strings if s.strip()), key=lambda s: (-len(s), s))
        return cls(tuple(kept), frozenset(ids), tokenizer)

    def check(self, text: str, index: int, mode: SpecialTokens = "refuse") -> str:
        """`text` unchanged, or escaped (mode "escape"); RequestError when it holds a control token."""
        require_valid_unicode(text, index)
        present = self.found_in(text)
        if present and mode == "refuse":
            raise RequestError(
                f"request {index}: text contains {min(present, key=text.index)!r}, a control token of the model's "
                f"chat template (user text may not forge turns); {_REMEDY}"
            )
        if present:
            text = self.escape(text)
        self._require_plain_tokens(text, index)
        return text

    def found_in(self, text: str) -> list[str]:
        """The control strings `text` contains, longest first."""
        return [s for s in self.strings if s in text]

    def escape(self, text: str) -> str:
        """`text` with a zero-width joiner after the first character of every control string in it."""
        for _ in range(_MAX_ESCAPE_ROUNDS):
            present = [s for s in self.found_in(text) if len(s) > 1]
            if not present:
                break
            pattern = re.compile("|".join(re.escape(s) for s in present))
            text = pattern.sub(lambda m: m.group(0)[0] + ESCAPE + m.group(0)[1:], text)
        return text

    def _require_plain_tokens(self, text: str, index: int) -> None:
        """The tokenizer's own verdict: `text` alone must give no control token id (a normalizer could still
        map a look-alike onto a marker)."""
        if not self.ids or not text:
            return
        forged = sorted(self.ids.intersection(_token_ids(self.tokenizer, text)))
        if forged:
            token = self.tokenizer.convert_ids_to_tokens(forged[0])
            raise RequestError(
                f"request {index}: text tokenizes to {token!r}, a control token of the model's chat template, "
                "through the tokenizer's normalization (user text may not forge turns); neither refusing nor "
                "escaping the literal marker applies: remove or rewrite that part of the text"
            )


def _looks_like_markup(token: str) -> bool:
    return len(token) >= 3 and token[0] in "<[" and token[-1] in ">]"


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: straight to Rust, no warnings
    if backend is not None:
        return list(backend.encode(text, add_special_tokens=False).ids)
    encode = getattr(tokenizer, "encode", None)
    try:  # a slow or non-HF tokenizer (mistral-common's never turns text into control tokens)
        return [int(i) for i in encode(text, add_special_tokens=False)] if callable(encode) else []
    except (TypeError, ValueError, NotImplementedError):
        return []  # no way to ask it: the literal check above is the rule
