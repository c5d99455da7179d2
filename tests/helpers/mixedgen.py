"""A mixed web corpus for the filter chain: documents whose fate under the default thresholds is
known (kept, or dropped by a named filter and reason), generated deterministically."""

import random

NOUNS = (
    "river garden village teacher market window engine harbor library forest mountain kitchen "
    "student farmer bridge castle doctor painter island orchard valley museum station letter"
).split()
ADJECTIVES = "quiet bright ancient narrow gentle busy golden careful distant simple modern humble".split()
VERBS = "visited painted crossed watched repaired opened described followed carried admired".split()
PLACES = "near beside behind under across beyond around".split()


def english(rng: random.Random, sentences: int = 10) -> str:
    """Plain English prose: lines of two sentences ending in a period, every n-gram of five words
    holding at least two drawn words, so that no n-gram repeats much within a document and two
    documents are not near duplicates."""

    def sentence() -> str:
        a, b, c, d, e = (rng.choice(NOUNS) for _ in range(5))
        x, y, z, w = (rng.choice(ADJECTIVES) for _ in range(4))
        return (
            f"The {x} {a} {rng.choice(VERBS)} the {y} {b} {rng.choice(PLACES)} the {z} {c}, "
            f"and the {w} {d} {rng.choice(VERBS)} it with {e}."
        )

    lines = [" ".join(sentence() for _ in range(2)) for _ in range(sentences // 2)]
    return "\n".join(lines)


FRENCH = (
    "Le petit village se trouve au bord de la rivière, et les habitants y vivent tranquillement depuis "
    "des siècles. Chaque matin, le boulanger ouvre sa boutique avant le lever du soleil.\n"
    "Les enfants traversent le pont pour aller à l'école, tandis que les pêcheurs réparent leurs filets. "
    "Le dimanche, toute la famille se réunit autour d'une grande table pour partager le repas.\n"
    "En automne, les arbres du jardin prennent des couleurs magnifiques et le vent apporte l'odeur de la "
    "pluie. Les anciens racontent des histoires du temps passé sur la place du marché."
)


def mixed_web_documents(seed: int = 0) -> dict[str, list[tuple[str, str | None]]]:
    """Named groups of (text, expected reject reason or None) for a web source."""
    rng = random.Random(seed)
    good = [english(rng) for _ in range(12)]
    pii = english(rng) + "\nWrite to jane.doe@example.com or call +1 415 555 0134 before noon today."
    spam = "\n".join(["Buy cheap watches now at the best price online today."] * 12)
    boilerplate = (
        english(rng, 4)
        + "\nThis site uses cookies to improve your experience.\nLorem ipsum dolor sit amet, consectetur adipiscing."
    )
    code = "def main():\n    values = {'a': 1, 'b': 2}\n    for key in values:\n        print(key, values[key])\n"
    return {
        "good": [(text, None) for text in good],
        "pii": [(pii, None)],
        "french": [(FRENCH, "language/lang_fr")],
        "spam": [(spam, "gopher_repetition/dup_line_frac")],
        "boilerplate": [(boilerplate, "c4/lorem_ipsum")],
        "code": [(code, "language/low_score")],  # fastText is unsure of code,
    }
