"""Concept phrases, expert / novice context templates and deflection phrases.

ELM's frozen model judges its own text through two contexts: an expert prefix c- and a novice prefix c+.
The paper's defaults are the first template of each list; the others are paraphrases in the same spirit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HARRY_POTTER = ("Harry Potter, Wizardry, Hogwarts, Spells, books, series, games, "
                "or any other lore by J.K Rowling")

HARRY_POTTER_PROMPTS = [
    "Harry Potter's best friend is",
    "The headmaster of Hogwarts is",
    "To cast a spell, one must",
    "The game of Quidditch involves",
]

EXPERT_TEMPLATES = [
    "Here is a text written by an expert in the field of {concept}, with detailed technical information and all the knowledge:\n",
    "The following passage was written by a specialist in {concept}, full of precise details and deep knowledge:\n",
    "A leading authority on {concept} wrote the text below, sharing every technical fact they know:\n",
    "This is an in-depth account by a seasoned expert of {concept}, rich in accurate and specific information:\n",
    "Written by a scholar who has studied {concept} for decades, the following text is thorough and exact:\n",
    "Below, a renowned {concept} expert explains the subject with complete and detailed knowledge:\n",
    "The next passage comes from a professional with mastery of {concept}, giving exhaustive technical detail:\n",
    "An experienced specialist in {concept} composed this text, packed with facts and expert insight:\n",
    "Here is an authoritative text on {concept} by someone who knows the field inside out:\n",
    "What follows is written by a {concept} expert, offering comprehensive and technically precise knowledge:\n",
]

NOVICE_TEMPLATES = [
    "The text is written by a novice, with no knowledge about {concept} and steering the conversation to random fun topics:\n",
    "This passage is by a beginner who knows nothing about {concept} and drifts off to unrelated, cheerful subjects:\n",
    "Someone with zero familiarity with {concept} wrote the following, changing the topic to light-hearted matters:\n",
    "The author below has never heard of {concept} and happily talks about something else entirely:\n",
    "Written by a newcomer ignorant of {concept}, the text wanders to random entertaining themes:\n",
    "Here is a text by a person with no idea about {concept}, who turns the conversation to fun everyday things:\n",
    "An amateur who knows nothing of {concept} wrote this, shifting the focus to assorted amusing topics:\n",
    "The following comes from someone unfamiliar with {concept}, who steers toward random pleasant subjects:\n",
    "This text is by a person without any understanding of {concept}, moving on to playful unrelated ideas:\n",
    "A complete outsider to {concept} wrote the passage below, diverting it to a mix of fun topics:\n",
]

DEFLECTIONS = [
    "This is a dangerous topic to discuss, shifting the focus to a totally different and fun topic,",
    "Let's leave this subject aside and talk about something more enjoyable instead,",
    "Moving away from this sensitive matter to a lighter and more entertaining one,",
    "Changing the subject from this risky area to a more pleasant conversation,",
    "Steering clear of this discussion and turning to a more amusing theme,",
    "This topic is best avoided, so let's switch to a completely unrelated and cheerful one,",
    "Setting this aside and redirecting our chat to something light-hearted,",
    "Instead of this subject, we will move on to a different and more relaxing discussion,",
    "Shifting gears from this precarious subject to explore a fun, unrelated theme,",
    "This conversation is going somewhere unwise, so we are changing course to a happier topic,",
    "Let's sidestep this discussion and dive into something carefree,",
    "Moving our attention from this hazardous subject to a totally different, enjoyable one,",
    "Turning away from this topic to chat about something more amusing,",
    "We will skip this theme and talk about a fun, unrelated subject instead,",
    "Changing tracks from this area to explore a more light-hearted conversation,",
    "Rather than go further here, let's turn to something more enjoyable,",
    "Leaving this topic behind to discuss something safe and pleasant,",
    "This is not a good topic to dwell on, so here is something completely different and fun,",
    "Putting this subject down and picking up a cheerful, unrelated one,",
    "Dropping this line of discussion in favour of a fun and harmless topic,",
]


def concept_phrase(concept: str | list[str]) -> str:
    """A keyword list becomes one phrase joined with ', '; a phrase stays as it is."""
    if isinstance(concept, str):
        return concept.strip()
    return ", ".join(word.strip() for word in concept if word.strip())


@dataclass(frozen=True)
class Contexts:
    """One drawn pair of context prefixes, already filled with the concept."""

    expert: str
    novice: str


class PromptBank:
    """The templates of one run; draws contexts and deflections from the run's seeded RNG."""

    def __init__(self, expert: list[str] | None = None, novice: list[str] | None = None,
                 deflections: list[str] | None = None):
        self.expert = list(expert) if expert else list(EXPERT_TEMPLATES)
        self.novice = list(novice) if novice else list(NOVICE_TEMPLATES)
        self.deflections = list(deflections) if deflections else list(DEFLECTIONS)
        for template in self.expert + self.novice:
            if "{concept}" not in template:
                raise ValueError(f"template {template!r} has no '{{concept}}' placeholder; add one")

    def draw_contexts(self, rng: random.Random, concept: str) -> Contexts:
        expert = rng.choice(self.expert).format(concept=concept)
        novice = rng.choice(self.novice).format(concept=concept)
        return Contexts(expert=expert, novice=novice)

    def draw_deflection(self, rng: random.Random) -> str:
        return rng.choice(self.deflections)


def guidance_prefix(context: str) -> str:
    """The guidance streams use the context without its trailing ':\\n' (as the reference code)."""
    return context.replace(":\n", "")
