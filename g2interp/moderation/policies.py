"""Harm policies: ShieldGemma's four published guidelines, and custom ones.

The wording is ShieldGemma's model card (``google/shieldgemma-2b``, "Guidelines to use in prompts"):
one phrasing for prompt-only classification ("The prompt shall not contain or seek generation of
content that ...") and one for prompt-response classification ("The chatbot shall not generate content
that ...").
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class HarmType(str, enum.Enum):
    """The four harm types ShieldGemma is trained on (also the keys of the default scores)."""

    SEXUALLY_EXPLICIT = "sexually_explicit"
    DANGEROUS_CONTENT = "dangerous_content"
    HATE_SPEECH = "hate_speech"
    HARASSMENT = "harassment"


@dataclass(frozen=True)
class Policy:
    """One safety principle: the text placed after ``* `` in ShieldGemma's template."""

    name: str
    """Key the policy's probability is reported under (a harm type's value, or a name of your own)."""
    definition: str
    """Principle used for prompt-only classification, e.g. ``"No Spam": The prompt shall not ...``."""
    response_definition: str | None = None
    """Principle used when classifying a chatbot response; None uses ``definition`` for both."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a policy needs a non-empty name, got {self.name!r}")
        for field_name in ("definition", "response_definition"):
            value = getattr(self, field_name)
            if field_name == "response_definition" and value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(
                    f"policy {self.name!r}: {field_name} must be a str, got {type(value).__name__}"
                )
            if not value.strip():
                raise ValueError(
                    f"policy {self.name!r} has an empty {field_name}; write the principle the text must not "
                    "violate, e.g. '\"No Spam\": The prompt shall not contain unsolicited advertising.'"
                )
            object.__setattr__(self, field_name, value.strip())
        object.__setattr__(self, "name", self.name.strip())

    def text_for(self, response: bool) -> str:
        """The definition for prompt-only (``response=False``) or prompt-response classification."""
        return self.response_definition if response and self.response_definition else self.definition


def _shieldgemma(name: HarmType, title: str, body: str) -> Policy:
    return Policy(
        name=name.value,
        definition=f'"{title}": The prompt shall not contain or seek generation of content that {body}',
        response_definition=f'"{title}": The chatbot shall not generate content that {body}',
    )


SHIELDGEMMA_POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        _shieldgemma(
            HarmType.SEXUALLY_EXPLICIT,
            "No Sexually Explicit Information",
            "contains references to sexual acts or other lewd content (e.g., sexually graphic descriptions, "
            "content aimed at causing arousal). Medical or scientific terms related to human anatomy or sex "
            "education are permitted.",
        ),
        _shieldgemma(
            HarmType.DANGEROUS_CONTENT,
            "No Dangerous Content",
            "harming oneself and/or others (e.g., accessing or building firearms and explosive devices, "
            "promotion of terrorism, instructions for suicide).",
        ),
        _shieldgemma(
            HarmType.HATE_SPEECH,
            "No Hate Speech",
            "targeting identity and/or protected attributes (e.g., racial slurs, promotion of discrimination, "
            "calls to violence against protected groups) or dehumanizing/belittling/vilifying on the bases of "
            "race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, "
            "gender, gender identity, caste, or any other protected status. We do allow content that includes "
            "a reference to a protected individual or group in a positive manner.",
        ),
        _shieldgemma(
            HarmType.HARASSMENT,
            "No Harassment",
            "is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., "
            "physical threats, denial of tragic events, disparaging victims of violence).",
        ),
    )
}
"""ShieldGemma's four guidelines, keyed by harm type value."""

DEFAULT_POLICIES: tuple[Policy, ...] = tuple(SHIELDGEMMA_POLICIES.values())

UNSAFE = Policy(
    name="unsafe",
    definition='"No Harmful Content": The prompt shall not contain or seek generation of content that is '
    "sexually explicit, dangerous, hateful or harassing.",
    response_definition='"No Harmful Content": The chatbot shall not generate content that is sexually '
    "explicit, dangerous, hateful or harassing.",
)
"""Opt-in overall policy (our wording, not ShieldGemma's); the embedded model has a probe head for it,
trained on every set's ``unsafe`` label."""

BUILTIN_POLICIES: dict[str, Policy] = {**SHIELDGEMMA_POLICIES, UNSAFE.name: UNSAFE}
"""Policies that can be named by string (and that shipped probe heads may score)."""


def resolve_policies(policies: Iterable[Policy | str] | None) -> tuple[Policy, ...]:
    """Policies from ``Policy`` objects and/or built-in names; None gives the four ShieldGemma ones."""
    if policies is None:
        return DEFAULT_POLICIES
    if isinstance(policies, (str, Policy)):
        policies = [policies]
    out: list[Policy] = []
    for p in policies:
        if isinstance(p, HarmType):
            p = p.value
        if isinstance(p, str):
            if p not in BUILTIN_POLICIES:
                raise ValueError(
                    f"unknown harm type {p!r}; use one of {sorted(BUILTIN_POLICIES)} or pass a "
                    "Policy(name, definition)"
                )
            p = BUILTIN_POLICIES[p]
        if not isinstance(p, Policy):
            raise TypeError(f"policies must be Policy objects or harm type names, got {type(p).__name__}")
        out.append(p)
    if not out:
        raise ValueError("no policy given: pass at least one Policy or harm type name")
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"policy names must be unique; repeated: {dupes}")
    return tuple(out)


def fitted_policy(name: str) -> Policy:
    """The policy of a head fitted from labelled examples: its name is all a user gives."""
    return Policy(name, f'"{name}": as learned from labelled examples by a probe head.')
