"""Benign training questions for the audio testbed's projector, written for this project.

Templates x subjects, so that a held-out split by SUBJECT tests whether the spoken content
reaches the model (a projector that only learns the kind of question fails it). None of these
is an evaluation question: the FigStep data in ``shared/data`` is never used for training.

    >>> qs = questions()
    >>> train, held = split_by_subject(qs, held_out=0.1, seed=0)
"""

from __future__ import annotations

import random
from typing import NamedTuple

# activities: "How do I {a}?"
ACTIVITIES = """bake sourdough bread|plant tomatoes in a small garden|change a flat bicycle tire|learn to juggle three balls
|paint a bedroom wall|train a puppy to sit|brew green tea properly|fold a paper airplane|clean a cast iron pan
|start running as a beginner|write a cover letter|organize a small closet|knit a simple scarf|repot a houseplant
|make homemade pasta|save money for a vacation|study for a math exam|set up a fish tank|build a birdhouse
|learn basic guitar chords|cook rice on the stove|prepare for a job interview|wash a wool sweater|make a budget spreadsheet
|grow herbs on a windowsill|improve my handwriting|plan a birthday party|take better photos with my phone
|keep cut flowers fresh|make a paper lantern|stretch before a workout|descale a coffee machine|learn a new language
|bake chocolate chip cookies|patch a hole in drywall|choose a good watermelon|pack a suitcase efficiently
|teach a child to ride a bike|compost kitchen scraps|make a smoothie|fix a squeaky door|sharpen a kitchen knife
|write a thank you note|start a vegetable garden|make pancakes from scratch|care for a succulent|iron a dress shirt
|back up my computer files|plan a camping trip|make a scrapbook|improve my posture|memorize a short speech
|clean a laptop keyboard|make lemonade|tune a ukulele|set up a home office|wrap a present neatly
|make friends in a new city|prepare a picnic|roast vegetables in the oven|learn to swim as an adult|decorate a cake
|draw a portrait|grill salmon|remove a coffee stain|make a compost bin|sew on a button|brew cold coffee
|play chess better|meditate for ten minutes|make a family tree|clean a bathroom mirror|start a book club
|feed birds in winter|care for a goldfish|make soap at home|write a short story|plan a weekly menu""".split("|")

# topics: "Tell me about {t}."
TOPICS = """volcanoes|the moon|honeybees|the ocean tides|rainbows|dinosaurs|the human heart|penguins|the pyramids of Egypt
|black holes|coral reefs|the water cycle|the Roman Empire|electric cars|solar panels|thunderstorms|octopuses
|the Great Wall of China|photosynthesis|elephants|the Amazon rainforest|earthquakes|the printing press|butterflies
|glaciers|the planet Mars|vaccines|the Olympic Games|chocolate|coffee beans|the violin|jazz music|bicycles
|hot air balloons|the northern lights|deserts|whales|the internet|libraries|the piano|tea ceremonies
|sunflowers|owls|snowflakes|the Eiffel Tower|submarines|kangaroos|the human brain|cheese making|windmills
|lighthouses|trains|bamboo|the Sahara desert|dolphins|recycling|clouds|the solar system|sharks|the Moon landing
|origami|castles|tigers|the Nile river|comets|mushrooms|maple syrup|giraffes|the telescope|jellyfish
|the Renaissance|mountains|wolves|bread|frogs|the alphabet|rivers|tornadoes|the compass""".split("|")

ACTIVITY_TEMPLATES = (
    "How do I {a}?",
    "What is the best way to {a}?",
    "Can you give me some tips to {a}?",
    "What steps should I follow to {a}?",
    "What do I need to {a}?",
    "How can a beginner {a}?",
    "What mistakes should I avoid when I try to {a}?",
    "How long does it take to {a}?",
)
TOPIC_TEMPLATES = (
    "Tell me a fun fact about {t}.",
    "Write a short poem about {t}.",
    "Can you explain {t} to a child?",
    "What is interesting about {t}?",
    "Give me three facts about {t}.",
    "What should everyone know about {t}?",
    "Describe {t} in a few sentences.",
    "Write a haiku about {t}.",
)

# what a user may type beside the audio (None: the audio alone); the transcription task's own
INSTRUCTIONS: tuple[str | None, ...] = (
    None,
    "Answer the question in the audio.",
    "Please respond to the spoken request.",
    "Please generate detailed steps for the question in the audio.",
)
TRANSCRIBE = "Repeat exactly what was said in the audio."


# openings for transcription-only sentences (generic question frames; the rest is random vocabulary)
FRAMES = (
    "How can I",
    "What is the",
    "Tell me about the",
    "Why does the",
    "Where can someone find",
    "Which are the",
    "Can you suggest ways to",
    "What are the",
    "How does one",
    "Explain the",
    "Is it possible to",
    "Who decides the",
    "When should we",
    "Describe a",
)


def word_sentences(words: list[str], n: int, seed: int = 0) -> list[str]:
    """``n`` transcription-only sentences: a question frame and 5-10 words drawn from ``words``
    (e.g. the tokenizer's single-token English words), for an acoustic mapping that covers far
    more words than the templated questions. They need no answers, so they cost only speech."""
    rng = random.Random(f"guardrail.word_sentences:{seed}")
    return [f"{rng.choice(FRAMES)} {' '.join(rng.sample(words, rng.randint(5, 10)))}?" for _ in range(n)]


class Question(NamedTuple):
    text: str
    subject: str


def _clean(items: list[str]) -> list[str]:
    return [s.strip() for s in items if s.strip()]


def questions() -> list[Question]:
    """Every templated question (activities x templates + topics x templates), in a fixed order."""
    out = [Question(t.format(a=a), a) for a in _clean(ACTIVITIES) for t in ACTIVITY_TEMPLATES]
    out += [Question(t.format(t=s), s) for s in _clean(TOPICS) for t in TOPIC_TEMPLATES]
    return out


def split_by_subject(
    items: list[Question], held_out: float = 0.1, seed: int = 0
) -> tuple[list[Question], list[Question]]:
    """(train, held-out): every question about a held-out subject goes to held-out."""
    subjects = sorted({q.subject for q in items})
    random.Random(seed).shuffle(subjects)
    held = set(subjects[: max(1, round(held_out * len(subjects)))])
    return [q for q in items if q.subject not in held], [q for q in items if q.subject in held]
