"""Guarded generation: the pre-filter on the prompt, generation, the post-filter on the response.

Two forms of the post-filter:

* whole response (default): generate, check the continuation, release it only if the check passes;
* streaming (``stream=True`` or :func:`iter_guarded`): decode token by token, check the whole text so
  far every ``check_every`` new tokens, release what passed, and stop decoding as soon as a check
  trips, so the tokens that tripped it are never released. The final check still runs on the whole
  response, and only then is the last stretch released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import NamedTuple

from g2interp.model.gemma import HookedGemma
from g2interp.moderation.moderator import Moderator, Thresholds, Verdict

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"  # what a decoder gives for the bytes of a character not finished yet


class GuardedGeneration(NamedTuple):
    """What ``guarded_generate`` returns."""

    text: str | None
    """The model's continuation when both checks passed; None when blocked."""
    allowed: bool
    """Whether ``text`` was released."""
    refusal: str | None
    """Why it was blocked (which check, which policies); None when allowed."""
    prompt_verdict: Verdict
    """The pre-filter's verdict on the prompt (every score)."""
    response_verdict: Verdict | None
    """The post-filter's verdict on the continuation; None if the prompt was blocked or nothing was generated.

    When streaming: the verdict of the last check run (the one that tripped, or the final one)."""
    released: str = ""
    """Text already shown to the user: the whole ``text`` when allowed; when streaming and blocked, what
    passed the checks before the one that tripped ("" when nothing)."""
    stopped_at: int | None = None
    """When a post-filter check tripped: the number of new tokens generated at that check; else None."""
    checks: int = 0
    """How many post-filter checks ran on the response (the final one included)."""


class GuardedStream:
    """Iterator over the released chunks of a streaming guarded generation.

    Each item is text that passed a check, in order; their concatenation is ``result.released``.
    ``result`` (a :class:`GuardedGeneration`) is set once the iterator is exhausted; ``close()``
    stops decoding early (``result`` stays None).
    """

    def __init__(self, steps: Generator[str, None, GuardedGeneration]):
        self._steps = steps
        self.result: GuardedGeneration | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        try:
            return next(self._steps)
        except StopIteration as stop:
            if self.result is None:  # a second next() after the end carries no value
                self.result = stop.value
            raise

    def close(self) -> None:
        """Stop decoding now; nothing more is released."""
        self._steps.close()


def check_every_value(check_every: object) -> int:
    """``check_every`` if it is a valid check interval (an int >= 1), else a ValueError."""
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(
            f"check_every must be an int >= 1 (new tokens between post-filter checks), got {check_every!r}"
        )
    return check_every


def _safe_prefix(text: str) -> str:
    """``text`` less a trailing partial character, which may still change as more tokens arrive."""
    return text.rstrip(_REPLACEMENT)


def _refusal(verdict: Verdict) -> str:
    return f"response withheld: {', '.join(verdict.tripped)}"


def _stream_steps(
    model: HookedGemma,
    prompt: str,
    moderator: Moderator,
    thresholds: Thresholds,
    check_every: int,
    generation_args: dict,
) -> Generator[str, None, GuardedGeneration]:
    """Yield released chunks; return the :class:`GuardedGeneration`. The decode stops when this stops."""
    pre = moderator.check_prompt(prompt, thresholds)
    if pre.blocked:
        return GuardedGeneration(None, False, f"prompt blocked by {', '.join(pre.tripped)}", pre, None)
    tokenizer = model._require_tokenizer()
    ids: list[int] = []
    released = ""
    checks = 0
    post: Verdict | None = None
    checked_text: str | None = None  # the text the last check passed

    def release(text: str) -> str:
        """The part of ``text`` beyond ``released`` when ``released`` is a prefix of it, else ""."""
        if not text.startswith(released):
            logger.warning("decoded text no longer extends the released text; holding back the rest")
            return ""
        return text[len(released) :]

    token_stream = model.generate_stream(prompt, **generation_args)
    try:
        for token in token_stream:
            ids.append(token)
            if len(ids) % check_every:
                continue
            text = tokenizer.decode(ids, skip_special_tokens=True)
            if not text.strip():
                continue  # nothing to judge yet; kept back until a check passes or the end
            post = moderator.check_response(prompt, text, thresholds)
            checks += 1
            if post.blocked:
                logger.info("streaming post-filter tripped after %d new tokens: %s", len(ids), post.tripped)
                return GuardedGeneration(
                    None, False, _refusal(post), pre, post, released, stopped_at=len(ids), checks=checks
                )
            checked_text = text
            chunk = release(_safe_prefix(text))
            if chunk:
                released += chunk
                yield chunk
    finally:
        token_stream.close()  # stop decoding: no forward pass after the last token taken
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if text.strip() and text != checked_text:
        post = moderator.check_response(prompt, text, thresholds)
        checks += 1
        if post.blocked:
            logger.info("final post-filter tripped on %d new tokens: %s", len(ids), post.tripped)
            return GuardedGeneration(
                None, False, _refusal(post), pre, post, released, stopped_at=len(ids), checks=checks
            )
    chunk = release(text)
    if chunk:
        released += chunk
        yield chunk
    return GuardedGeneration(text, True, None, pre, post, released, checks=checks)


def iter_guarded(
    model: HookedGemma,
    prompt: str,
    moderator: Moderator,
    thresholds: Thresholds = None,
    *,
    check_every: int = 16,
    **generation_args,
) -> GuardedStream:
    """Streaming guarded generation as an iterator of released chunks (see :func:`guarded_generate`).

    Nothing runs until the first item is asked for; ``.result`` holds the outcome once exhausted.
    """
    check_every = check_every_value(check_every)
    return GuardedStream(_stream_steps(model, prompt, moderator, thresholds, check_every, generation_args))


def guarded_generate(
    model: HookedGemma,
    prompt: str,
    moderator: Moderator,
    thresholds: Thresholds = None,
    *,
    stream: bool = False,
    check_every: int = 16,
    on_release: Callable[[str], None] | None = None,
    **generation_args,
) -> GuardedGeneration:
    """Check the prompt, generate, check the continuation; release it only if both pass.

    ``generation_args`` go to ``model.generate`` (``model.generate_stream`` when streaming):
    ``max_new_tokens``, ``temperature``, ``seed``...

    With ``stream=True`` the prompt is checked as before, then the response is decoded one token at a
    time and the whole text so far is checked every ``check_every`` new tokens: a passing check
    releases the tokens held since the previous one (to ``on_release``, when given), a tripping check
    stops decoding at once and releases nothing more (``stopped_at`` says where). At the end (EOS or
    ``max_new_tokens``) the final check runs on the whole response before the rest is released.
    Released text is always a prefix of the response; a character split across tokens is held back
    until it is complete. Without ``stream``, ``on_release`` gets the whole text once, if allowed.
    """
    check_every = check_every_value(check_every)
    if stream:
        steps = _stream_steps(model, prompt, moderator, thresholds, check_every, generation_args)
        try:
            while True:
                try:
                    chunk = next(steps)
                except StopIteration as stop:
                    return stop.value
                if on_release is not None:
                    on_release(chunk)
        finally:
            steps.close()  # a callback that raises still stops the decoding
    pre = moderator.check_prompt(prompt, thresholds)
    if pre.blocked:
        return GuardedGeneration(None, False, f"prompt blocked by {', '.join(pre.tripped)}", pre, None)
    out = model.generate(prompt, **generation_args)
    text = out.texts[0]
    if not text.strip():
        return _released(GuardedGeneration(text, True, None, pre, None, text), on_release)
    post = moderator.check_response(prompt, text, thresholds)
    if post.blocked:
        n_new = len(out.new_tokens[0])
        return GuardedGeneration(None, False, _refusal(post), pre, post, stopped_at=n_new, checks=1)
    return _released(GuardedGeneration(text, True, None, pre, post, text, checks=1), on_release)


def _released(out: GuardedGeneration, on_release: Callable[[str], None] | None) -> GuardedGeneration:
    if on_release is not None and out.released:
        on_release(out.released)
    return out
