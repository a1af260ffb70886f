"""The words of the synthetic data, all derived from scenes: captions, questions with their exact
answers, chats about one or two images, and short text-only documents.

A caption names everything a scene shows, in reading order, and nothing else; every answer is
true of the scene's pixels; a text document's arithmetic is right. Random choices (which
questions, in what order, which topics) come from the ``rng`` the caller passes, so the same
row RNG gives the same text.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from neo_data.format.schema import IMAGE_PLACEHOLDER
from neo_data.synthetic.scenes import PALETTE, PLURALS, SHAPES, Scene, ShapeGroup, make_scene

# How captions and answers name each cell of the grid.
POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip

DESCRIBE_QUESTION = "Describe the image."
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a careful assistant that answers questions about images exactly.",
    "Answer questions about the pictures the user shows you in one short sentence.",
)


# ---------------------------------------------------------------------------------------------
# Captions and questions
# ---------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else PLURALS[shape]


def _quantity(group: ShapeGroup) -> str:
    """``"a red circle"``, ``"an orange star"``, ``"three blue squares"``."""
    lead = _article(group.colour) if group.count == 1 else _number(group.count)
    return f"{lead} {group.colour} {_noun(group.shape, group.count)}"


def _join(items: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def caption_for(scene: Scene) -> str:
    """The caption of a scene; it names everything drawn, in reading order, and nothing else.

    "Two red circles on the left and a blue square at the top, on a white background."
    "The word 'neo' written in green in the center, on a white background."
    """
    on_background = f"on {_article(scene.background)} {scene.background} background"
    if scene.word is not None:
        where = POSITION_PHRASES[scene.word_position]
        return f"The word '{scene.word}' written in {scene.word_colour} {where}, {on_background}."
    parts = [f"{_quantity(g)} {POSITION_PHRASES[g.position]}" for g in scene.groups]
    return _sentence(f"{_join(parts)}, {on_background}.")


def _count_qa(shape: str, colour: str, count: int) -> tuple[str, str]:
    if count == 0:
        answer = f"There are no {colour} {PLURALS[shape]}."
    elif count == 1:
        answer = f"There is one {colour} {shape}."
    else:
        answer = f"There are {_number(count)} {colour} {PLURALS[shape]}."
    return f"How many {colour} {PLURALS[shape]} are there?", answer


def _group_qas(scene: Scene, group: ShapeGroup) -> list[tuple[str, str]]:
    """Count, position, "what is there" and (when the shape is unique) colour of one group."""
    noun = _noun(group.shape, group.count)
    be = "is" if group.count == 1 else "are"
    where = POSITION_PHRASES[group.position]
    qas = [
        _count_qa(group.shape, group.colour, group.count),
        (f"Where {be} the {group.colour} {noun}?", f"The {group.colour} {noun} {be} {where}."),
        (f"What is {where}?", _sentence(_quantity(group)) + "."),
    ]
    if sum(g.shape == group.shape for g in scene.groups) == 1:
        qas.append((f"What colour {be} the {noun}?", f"The {noun} {be} {group.colour}."))
    return qas


def _absent_qa(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A count question whose answer is "no ...": a (shape, colour) pair the scene lacks."""
    present = {(g.shape, g.colour) for g in scene.groups}
    while True:
        shape, colour = rng.choice(SHAPES), rng.choice(list(PALETTE))
        if (shape, colour) not in present:
            return _count_qa(shape, colour, 0)


def qa_for(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Every question the scene answers exactly, with its answer, in a random order.

    Shapes: per group how many / where / what is at a cell / what colour (when the shape is
    unique); one absent pair ("There are no ..."); the total count. Words: what word, what
    colour, where. Both: the background colour and "Describe the image." (answer: the caption).
    ``rng`` picks the absent pair and the order; callers take a prefix for shorter chats.
    """
    qas = [
        ("What colour is the background?", f"The background is {scene.background}."),
        (DESCRIBE_QUESTION, caption_for(scene)),
    ]
    if scene.word is not None:
        qas += [
            ("What word is written?", f"The word is '{scene.word}'."),
            ("What colour is the word?", f"The word is {scene.word_colour}."),
            ("Where is the word?", f"The word is {POSITION_PHRASES[scene.word_position]}."),
        ]
    else:
        for group in scene.groups:
            qas += _group_qas(scene, group)
        qas.append(_absent_qa(scene, rng))
        n = scene.num_shapes
        total = "There is one shape." if n == 1 else f"There are {_number(n)} shapes."
        qas.append(("How many shapes are there?", total))
    rng.shuffle(qas)
    return qas


# ---------------------------------------------------------------------------------------------
# Text documents
# ---------------------------------------------------------------------------------------------

SHAPE_FACTS = {
    "circle": "A circle is round and has no corners.",
    "square": "A square has four equal sides and four corners.",
    "triangle": "A triangle has three sides and three corners.",
    "star": "The stars in these pictures have five points.",
    "diamond": "A diamond has four sides and stands on one of its corners.",
    "hexagon": "A hexagon has six sides and six corners.",
    "cross": "A cross is made of two bars that meet in the middle.",
}
COLOUR_FACTS = (
    "Mixing blue and yellow makes green.",
    "Mixing red and yellow makes orange.",
    "Mixing red and blue makes purple.",
    "Mixing red and white makes pink.",
    "Mixing black and white makes gray.",
    "The colours of the rainbow are red, orange, yellow, green, blue, indigo and violet.",
    "On a clear day the sky is blue.",
    "Fresh grass is green.",
    "Snow is white.",
    "A ripe banana is yellow.",
    "Text is easiest to read when its colour is very different from the background.",
)
NAMES = ("Ada", "Ben", "Mia", "Sam", "Lea", "Tom", "Noor", "Ravi", "Yuki", "Omar")
ITEMS = (("apple", "apples"), ("ball", "balls"), ("book", "books"), ("cup", "cups"),
         ("box", "boxes"), ("pencil", "pencils"), ("shell", "shells"), ("coin", "coins"))  # fmt: skip


def _amount(rng: random.Random, n: int, item: tuple[str, str]) -> str:
    """``"3 apples"`` or ``"three apples"`` (digits or words, at random)."""
    number = str(n) if rng.random() < 0.5 else _number(n)
    return f"{number} {item[0] if n == 1 else item[1]}"


def _shape_paragraph(rng: random.Random) -> str:
    return " ".join(SHAPE_FACTS[s] for s in rng.sample(SHAPES, rng.randint(2, 4)))


def _colour_paragraph(rng: random.Random) -> str:
    return " ".join(rng.sample(COLOUR_FACTS, rng.randint(2, 4)))


def _arithmetic_paragraph(rng: random.Random) -> str:
    """A one-step addition or subtraction story with its equation; always arithmetically right."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a = rng.randint(1, 12)
    if rng.random() < 0.5:
        b = rng.randint(1, 8)
        story = f"{name} has {_amount(rng, a, item)}. {name} finds {_amount(rng, b, item)} more."
        result, equation = a + b, f"{a} + {b} = {a + b}"
    else:
        b = rng.randint(1, a)
        story = f"{name} has {_amount(rng, a, item)}. {name} gives {_amount(rng, b, item)} away."
        result, equation = a - b, f"{a} - {b} = {a - b}"
    return f"{story} Now {name} has {_amount(rng, result, item)}, because {equation}."


def _counting_paragraph(rng: random.Random) -> str:
    start = rng.randint(0, 12)
    stop = rng.randint(start + 2, min(start + 8, len(NUMBER_WORDS) - 1))
    words = ", ".join(NUMBER_WORDS[start : stop + 1])
    return f"Counting from {start} to {stop}: {words}. The number after {stop - 1} is {stop}."


def text_document(rng: random.Random) -> tuple[str, list[str], list[Scene]]:
    """2..5 paragraphs on random topics; returns (text, topics, scenes described in the text)."""
    generators: dict[str, Callable[[random.Random], str]] = {
        "shapes": _shape_paragraph,
        "colours": _colour_paragraph,
        "arithmetic": _arithmetic_paragraph,
        "counting": _counting_paragraph,
    }
    paragraphs, topics, scenes = [], [], []
    for _ in range(rng.randint(2, 5)):
        topic = rng.choice([*generators, "scene"])
        if topic == "scene":
            scene = make_scene(rng)
            scenes.append(scene)
            paragraphs.append(f"A picture shows the following. {caption_for(scene)}")
        else:
            paragraphs.append(generators[topic](rng))
        topics.append(topic)
    return "\n\n".join(paragraphs), topics, scenes


# ---------------------------------------------------------------------------------------------
# Conversations
# ---------------------------------------------------------------------------------------------

ORDINALS = ("first", "second")


def _about(index: int, question: str) -> str:
    """Point a single-image question at one image of a two-image chat."""
    if question == DESCRIBE_QUESTION:
        return f"Describe the {ORDINALS[index]} image."
    return f"In the {ORDINALS[index]} image, {question[0].lower()}{question[1:]}"


def _compare_qa(scenes: list[Scene], rng: random.Random) -> tuple[str, str]:
    """A question that needs both images: same background, or which has more shapes."""
    a, b = scenes
    if rng.random() < 0.5:
        question = "Do the two images have the same background colour?"
        if a.background == b.background:
            return question, f"Yes, both backgrounds are {a.background}."
        return (
            question,
            f"No, the first background is {a.background} and the second is {b.background}.",
        )
    question = "Which image has more shapes?"
    if a.num_shapes == b.num_shapes:
        return question, f"Neither, both have {_number(a.num_shapes)}."
    more = 0 if a.num_shapes > b.num_shapes else 1
    counts = f"{_number(a.num_shapes)} against {_number(b.num_shapes)}"
    return question, f"The {ORDINALS[more]} image, {counts}."


def chat_turns(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    turns = []
    for question, answer in pairs:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return turns


def _show_image(content: str, rng: random.Random) -> str:
    """Put an image placeholder before a question, or (one time in five) after it."""
    if rng.random() < 0.8:
        return f"{IMAGE_PLACEHOLDER}\n{content}"
    return f"{content}\n{IMAGE_PLACEHOLDER}"


def one_image_chat(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """1..4 Q&A turns about one image, shown in the first question."""
    turns = chat_turns(qa_for(scene, rng)[: rng.randint(1, 4)])
    turns[0]["content"] = _show_image(turns[0]["content"], rng)
    return turns


def two_image_chat(scenes: list[Scene], rng: random.Random) -> list[dict[str, str]]:
    """Both images in the first question and questions that name the image, or the second
    image shown mid-chat; half the time a last question compares the two."""
    qas = [qa_for(s, rng) for s in scenes]
    if rng.random() < 0.5:
        picks = [rng.randrange(2) for _ in range(rng.randint(1, 3))]
        pairs = []
        for i in picks:
            question, answer = qas[i].pop()
            pairs.append((_about(i, question), answer))
        turns = chat_turns(pairs)
        turns[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\n{turns[0]['content']}"
    else:
        turns = chat_turns(qas[0][: rng.randint(1, 2)])
        turns[0]["content"] = _show_image(turns[0]["content"], rng)
        question, answer = qas[1][0]
        turns += chat_turns([(f"Here is another image. {question}", answer)])
        turns[-2]["content"] = f"{IMAGE_PLACEHOLDER}\n{turns[-2]['content']}"
    if rng.random() < 0.5:
        turns += chat_turns([_compare_qa(scenes, rng)])
    return turns


def describe_chat(scene: Scene, rng: random.Random, turns: int) -> list[dict[str, str]]:
    """``turns`` question/answer pairs about one image shown in the first question, "Describe
    the image." among them (the learning benchmark's conversations)."""
    qas = qa_for(scene, rng)
    describe = next(qa for qa in qas if qa[0] == DESCRIBE_QUESTION)
    others = [qa for qa in qas if qa[0] != DESCRIBE_QUESTION][: turns - 1]
    pairs = [describe, *others]
    rng.shuffle(pairs)
    chat = chat_turns(pairs)
    chat[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{chat[0]['content']}"
    return chat
