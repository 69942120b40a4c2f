"""synthetic_chat: an embedded, offline set of everyday assistant requests, each with a reference reply and a bad
reply, so chat-prompt RL (and the judge / reward model it needs) runs with no download.

Prompts combine a request type ("give me tips", "explain", "plan") with a topic. The reference (chosen) reply answers
that request about that topic in a few concrete sentences; the rejected reply is one of five failure modes (a needless
refusal, an off-topic reply, a curt non-answer, a dismissive reply, an answer about a different topic), which are the
subsets. Train and test use disjoint (request, topic) combinations; everything is seeded by dataset.seed.
It is a stand-in for hh_rlhf's helpful prompts with a known notion of better, not a benchmark.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Tuple

from rlhf.config import DatasetConfig

# topic -> (a short noun phrase, three concrete facts or steps about it)
TOPICS: Dict[str, Tuple[str, Tuple[str, str, str]]] = {
    "sleep": ("sleeping better", ("keep the same bedtime every day", "stop using screens an hour before bed",
                                  "keep the bedroom cool and dark")),
    "running": ("starting to run", ("alternate one minute of running with two of walking", "run three times a week",
                                    "buy shoes that fit well")),
    "saving": ("saving money", ("write down every expense for a month", "move a fixed sum to savings on payday",
                                "cancel subscriptions you do not use")),
    "cooking": ("cooking at home", ("plan three simple meals for the week", "cook rice or pasta in a big batch",
                                    "keep onions, garlic and canned tomatoes in stock")),
    "studying": ("studying for an exam", ("test yourself instead of rereading", "study in 25-minute blocks",
                                          "explain each topic out loud")),
    "plants": ("keeping houseplants alive", ("water only when the top soil is dry", "put them near a bright window",
                                             "use pots with drainage holes")),
    "guitar": ("learning the guitar", ("learn the chords G, C, D and E minor", "practise ten minutes every day",
                                       "use a tuner app before playing")),
    "interview": ("a job interview", ("research the company's products", "prepare three stories about your work",
                                      "ask two questions at the end")),
    "stress": ("handling stress", ("take a ten-minute walk outside", "breathe slowly for two minutes",
                                   "write down what is worrying you")),
    "email": ("writing a clear email", ("put the request in the first line", "keep it under five sentences",
                                        "end with the deadline")),
    "garden": ("starting a vegetable garden", ("start with lettuce, beans and tomatoes", "pick a spot with six hours "
                                               "of sun", "add compost to the soil")),
    "bike": ("maintaining a bicycle", ("check tyre pressure every week", "oil the chain once a month",
                                       "test the brakes before each ride")),
    "reading": ("reading more books", ("carry a book everywhere", "read twenty pages before bed",
                                       "stop a book you do not enjoy")),
    "coffee": ("brewing better coffee", ("grind the beans just before brewing", "use water just off the boil",
                                         "weigh 15 grams of coffee per 250 ml of water")),
    "moving": ("moving to a new flat", ("label every box by room", "book the van two weeks ahead",
                                        "pack a bag with essentials for the first night")),
    "language": ("learning a new language", ("practise fifteen minutes a day", "learn the 500 most common words "
                                             "first", "talk with a native speaker every week")),
    "cleaning": ("keeping a tidy home", ("clean for ten minutes every evening", "put things back right after use",
                                         "do the dishes before bed")),
    "photos": ("taking better phone photos", ("clean the lens first", "use natural light from a window",
                                              "keep the horizon straight")),
    "focus": ("focusing at work", ("turn off notifications", "work on one task at a time",
                                   "plan the day's three main tasks in the morning")),
    "travel": ("packing for a trip", ("make a list a week before", "roll clothes instead of folding them",
                                      "keep documents in one pocket")),
    "dog": ("training a puppy", ("reward good behaviour right away", "keep sessions to five minutes",
                                 "use the same word for each command")),
    "presentation": ("giving a presentation", ("rehearse it out loud three times", "put one idea on each slide",
                                               "start with the main point")),
    "water": ("drinking more water", ("keep a bottle on your desk", "drink a glass with every meal",
                                      "add lemon or mint for taste")),
    "budget": ("planning a monthly budget", ("list your fixed costs first", "set a limit for food and fun",
                                             "review it at the end of the month")),
}

REQUESTS: Tuple[Tuple[str, str], ...] = (
    ("Can you give me some tips for {t}?", "Here are three tips for {t}: {a}; {b}; and {c}. Start with the first one "
     "this week and add the others once it feels easy."),
    ("What is the best way to get started with {t}?", "A good way to get started with {t} is to {a}. After that, "
     "{b}, and {c}. Small steps you repeat work better than a big plan you drop."),
    ("I keep failing at {t}. What should I change?", "That is common, so do not be hard on yourself. For {t}, try "
     "to {a}, {b} and {c}. Change one habit at a time and check after two weeks."),
    ("Explain to a beginner how to approach {t}.", "For a beginner, {t} comes down to three habits: {a}, {b}, and "
     "{c}. Each one is simple; doing them regularly is what matters."),
    ("Give me a short plan for {t} this week.", "A plan for {t} this week: on Monday, {a}; on Wednesday, {b}; on "
     "Friday, {c}. At the weekend, note what worked and keep it."),
    ("My friend asked me about {t}. What advice should I pass on?", "You could tell your friend three things about "
     "{t}: {a}, {b}, and {c}. They are easy to remember and to try right away."),
)

FAILURES = ("refusal", "off-topic", "curt", "dismissive", "wrong-topic")
_REFUSALS = ("I'm sorry, but I can't help with that request.", "I would rather not give advice on that topic.",
             "As an AI, I am not able to help with questions like this.")
_OFF_TOPIC = ("The history of the printing press is fascinating: it changed how ideas spread across Europe.",
              "Penguins live mostly in the southern hemisphere and can swim very fast.",
              "The tallest mountain in the world is Mount Everest, at about 8,849 metres.")
_CURT = ("Just do it.", "Try harder.", "It depends.", "Search online.")
_DISMISSIVE = ("Honestly, {t} is not worth your time. Most people give up anyway.",
               "Why would you even bother with {t}? It rarely works out.")

SPLITS = ("train", "test")


def _combos() -> List[Tuple[int, str]]:
    return [(r, t) for r in range(len(REQUESTS)) for t in sorted(TOPICS)]


def _split_combos(seed: int, split: str) -> List[Tuple[int, str]]:
    """A seeded quarter of the (request, topic) combinations is held out for test."""
    combos = _combos()
    random.Random(seed * 7919 + 3).shuffle(combos)
    cut = len(combos) // 4
    return combos[:cut] if split == "test" else combos[cut:]


def _reply(request: int, topic: str) -> str:
    phrase, (a, b, c) = TOPICS[topic]
    return REQUESTS[request][1].format(t=phrase, a=a, b=b, c=c)


def synthetic_chat_rows(cfg: DatasetConfig, split: str) -> List[Dict[str, Any]]:
    """Rows {prompt, chosen, rejected, subset} for split "train" | "test", at most num_train / num_test of them
    (the set has len(REQUESTS) * len(TOPICS) prompts in all; a quarter is test)."""
    if split not in SPLITS:
        raise ValueError(f"dataset synthetic_chat: unknown split {split!r} (train | test)")
    rng = random.Random(cfg.seed * 1013 + (17 if split == "test" else 5))
    rows = []
    topics = sorted(TOPICS)
    for i, (request, topic) in enumerate(_split_combos(cfg.seed, split)):
        phrase = TOPICS[topic][0]
        subset = FAILURES[i % len(FAILURES)]
        if subset == "refusal":
            rejected = rng.choice(_REFUSALS)
        elif subset == "off-topic":
            rejected = rng.choice(_OFF_TOPIC)
        elif subset == "curt":
            rejected = rng.choice(_CURT)
        elif subset == "dismissive":
            rejected = rng.choice(_DISMISSIVE).format(t=phrase)
        else:
            other = rng.choice([t for t in topics if t != topic])
            rejected = _reply(request, other)
        rows.append({"prompt": REQUESTS[request][0].format(t=phrase), "chosen": _reply(request, topic),
                     "rejected": rejected, "subset": f"chat-{subset}"})
    cap = cfg.num_train if split == "train" else cfg.num_test
    return rows[:cap] if cap > 0 else rows
