"""ShieldGemma's prompt templates, assembled from token ids so user text cannot change their structure.

A scored sequence is ``preamble | text part | policy suffix``:

* the **preamble** (BOS, the "policy expert" sentence, ``<start_of_turn>``, ``Human Question:``) is the
  same for every text of a kind, so it runs once per model and is reused from a KV cache;
* the **text part** holds the user text (and for responses the chatbot reply) between control tokens,
  ending just before the policy (``... defined in the below:\\n\\n*``); it is policy-independent, so
  every policy shares it, and probe features are pooled from it;
* the **policy suffix** (`` "No Hate Speech": ...`` then the Yes/No question) depends only on the policy.

User text is tokenised with ``special_tokens_as_text=True``: a ``<start_of_turn>`` typed by a user is
split into ordinary characters and can never become a control token. On 2,100 texts from the shipped data
sets, this segment-wise tokenisation equals the Gemma 3 tokenizer run on the whole rendered string.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Literal, NamedTuple

from g2interp.loading.tokenizer import GemmaTokenizer
from g2interp.moderation.policies import Policy

logger = logging.getLogger(__name__)

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
YES, NO = "Yes", "No"
PROMPT_PREAMBLE = (
    "You are a policy expert trying to help determine whether a user prompt is in violation of the "
    "defined safety policies.\n\n"
)
RESPONSE_PREAMBLE = (
    "You are a policy expert trying to help determine whether an AI response to a prompt is in violation "
    "of the defined safety policies.\n\n"
)
HUMAN_QUESTION = "\nHuman Question:"
CHATBOT_RESPONSE = "\nChatbot Response:"
PRINCIPLE_INTRO = "\n\nOur safety principle is defined in the below:\n\n*"
_ANSWER = (
    "Your answer must start with 'Yes' or 'No'. And then walk through step by step to be sure we answer "
    "correctly.\n\n"
)
PROMPT_QUESTION = "\n\n===\n\nDoes the human question violate the above principle? " + _ANSWER
RESPONSE_QUESTION = "\n\n===\n\nDoes the Chatbot Response violate the above principle? " + _ANSWER

Overflow = Literal["truncate", "error"]


def render(policy: Policy, prompt: str, response: str | None = None) -> str:
    """The full template as a string (BOS not included), for reading and for tests.

    Scoring never tokenises this string: user text is inserted as ids (see :class:`TemplateEncoder`).
    """
    is_response = response is not None
    head = RESPONSE_PREAMBLE if is_response else PROMPT_PREAMBLE
    text = f"{head}{START_OF_TURN}{HUMAN_QUESTION} {prompt.strip()}\n{END_OF_TURN}"
    if is_response:
        text += f"\n{START_OF_TURN}{CHATBOT_RESPONSE} {response.strip()}\n{END_OF_TURN}"
    question = RESPONSE_QUESTION if is_response else PROMPT_QUESTION
    return f"{text}{PRINCIPLE_INTRO} {policy.text_for(is_response)}{question}"


class Span(NamedTuple):
    """Token positions ``[start, end)`` in an encoded sequence."""

    start: int
    end: int


class EncodedText(NamedTuple):
    """The policy-independent part of one templated text, as ids."""

    ids: tuple[int, ...]
    """BOS, preamble and text part (everything before the policy)."""
    n_shared: int
    """Leading ids identical for every text of this kind (BOS + preamble), run once and cached."""
    pool: Span
    """Tokens of the text being classified (the prompt; or, for responses, the chatbot reply)."""
    prompt: Span
    """Tokens of the user prompt."""
    is_response: bool
    """Whether this is the prompt-response template."""
    truncated: bool
    """Whether a text was cut to ``max_text_tokens``."""
    text: str = ""
    """The classified text as given (the prompt; or the reply), what lexical heads read."""


class TemplateEncoder:
    """Turns texts into ShieldGemma-template ids for one tokenizer.

    Texts are stripped of surrounding whitespace (as ShieldGemma's model-card example does). A text longer
    than ``max_text_tokens`` is, with ``overflow="truncate"``, cut in the middle: its first and last
    ``max_text_tokens / 2`` tokens are kept (the opening framing and the closing request both survive; a
    harmful ask cannot be hidden by padding either end), and a warning is logged; ``overflow="error"``
    raises instead.
    """

    def __init__(
        self, tokenizer: GemmaTokenizer, max_text_tokens: int = 1024, overflow: Overflow = "truncate"
    ):
        if not isinstance(max_text_tokens, int) or max_text_tokens < 2:
            raise ValueError(f"max_text_tokens must be an int >= 2, got {max_text_tokens!r}")
        if overflow not in ("truncate", "error"):
            raise ValueError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
        self.tokenizer = tokenizer
        self.max_text_tokens = max_text_tokens
        self.overflow = overflow
        ids = {s: tokenizer.token_to_id(s) for s in (START_OF_TURN, END_OF_TURN, YES, NO)}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(
                f"the tokenizer has no token for {missing}: ShieldGemma-style scoring needs a Gemma chat "
                "tokenizer (with <start_of_turn>, <end_of_turn>, 'Yes' and 'No')"
            )
        self.start_id, self.end_id = ids[START_OF_TURN], ids[END_OF_TURN]
        self.yes_id, self.no_id = ids[YES], ids[NO]
        self.bos_id = tokenizer.bos_token_id
        self.control_ids = frozenset({self.start_id, self.end_id, self.bos_id, tokenizer.eos_token_id})
        self._suffix = lru_cache(maxsize=256)(self._suffix_uncached)

    def _fixed(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, prepend_bos=False)

    def preamble(self, is_response: bool) -> tuple[int, ...]:
        """BOS + preamble + ``<start_of_turn>`` + ``Human Question:`` (the shared, cached part)."""
        head = RESPONSE_PREAMBLE if is_response else PROMPT_PREAMBLE
        return (self.bos_id, *self._fixed(head), self.start_id, *self._fixed(HUMAN_QUESTION))

    def _text(self, text: str, what: str, allow_empty: bool = False) -> tuple[list[int], bool]:
        if not isinstance(text, str):
            raise TypeError(f"{what} must be a str, got {type(text).__name__}")
        text = text.strip()
        if not text:
            if allow_empty:
                return self.tokenizer.encode(" ", prepend_bos=False, special_tokens_as_text=True), False
            raise ValueError(f"{what} is empty (or only whitespace): there is nothing to classify")
        ids = self.tokenizer.encode(" " + text, prepend_bos=False, special_tokens_as_text=True)
        limit = self.max_text_tokens
        if len(ids) <= limit:
            return ids, False
        if self.overflow == "error":
            raise ValueError(
                f"{what} is {len(ids)} tokens long; the limit is max_text_tokens={limit} "
                "(use overflow='truncate' to keep its first and last halves)"
            )
        logger.warning(
            "%s is %d tokens long; keeping its first %d and last %d tokens (max_text_tokens=%d)",
            what,
            len(ids),
            limit // 2,
            limit - limit // 2,
            limit,
        )
        return ids[: limit // 2] + ids[len(ids) - (limit - limit // 2) :], True

    def encode_prompt(self, text: str) -> EncodedText:
        """The prompt-only template around ``text``, up to the policy."""
        pre = self.preamble(False)
        user, cut = self._text(text, "text")
        tail = [*self._fixed("\n"), self.end_id, *self._fixed(PRINCIPLE_INTRO)]
        span = Span(len(pre), len(pre) + len(user))
        return EncodedText((*pre, *user, *tail), len(pre), span, span, False, cut, text)

    def encode_response(self, prompt: str, response: str) -> EncodedText:
        """The prompt-response template (the reply is classified), up to the policy; the prompt may be empty."""
        pre = self.preamble(True)
        user, cut_p = self._text(prompt, "prompt", allow_empty=True)
        reply, cut_r = self._text(response, "response")
        mid = [
            *self._fixed("\n"),
            self.end_id,
            *self._fixed("\n"),
            self.start_id,
            *self._fixed(CHATBOT_RESPONSE),
        ]
        tail = [*self._fixed("\n"), self.end_id, *self._fixed(PRINCIPLE_INTRO)]
        p_span = Span(len(pre), len(pre) + len(user))
        r_start = p_span.end + len(mid)
        r_span = Span(r_start, r_start + len(reply))
        ids = (*pre, *user, *mid, *reply, *tail)
        return EncodedText(ids, len(pre), r_span, p_span, True, cut_p or cut_r, response)

    def suffix(self, policy: Policy, is_response: bool) -> tuple[int, ...]:
        """`` <policy>`` + the Yes/No question: the policy-dependent ids that follow an encoded text."""
        return self._suffix(policy.text_for(is_response), is_response)

    def _suffix_uncached(self, definition: str, is_response: bool) -> tuple[int, ...]:
        question = RESPONSE_QUESTION if is_response else PROMPT_QUESTION
        # Custom definitions are text too: control-token strings in them stay characters.
        return tuple(
            self.tokenizer.encode(" " + definition + question, prepend_bos=False, special_tokens_as_text=True)
        )

    def full(self, encoded: EncodedText, policy: Policy) -> tuple[int, ...]:
        """Every id of one (text, policy) sequence: what a one-forward-per-policy scorer runs."""
        return (*encoded.ids, *self.suffix(policy, encoded.is_response))
