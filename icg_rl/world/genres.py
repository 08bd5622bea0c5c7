"""CoverWorld genres: each has a title vocabulary, a palette and a visual motif, and a title grammar over them.

Titles deliberately include punctuation and non-ASCII letters (é, ü, ø, ñ, å, —, …) so loaders, tokenizers
and prompts are exercised the way real catalogues exercise them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Genre:
    name: str
    motif: str  # one of render.MOTIFS
    background: tuple[float, float, float]  # RGB in [0, 1]
    foreground: tuple[float, float, float]
    accent: tuple[float, float, float]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    places: tuple[str, ...]


GENRES: tuple[Genre, ...] = (
    Genre("horror", "disc", (0.10, 0.05, 0.06), (0.70, 0.08, 0.10), (0.90, 0.85, 0.80),
          ("Haunted", "Bleeding", "Silent", "Cursed", "Hollow", "Grim"),
          ("Crypt", "Shadow", "Widow", "Skull", "Curse", "Ghoul"),
          ("Blackwood", "Dunmoor", "Schädelberg", "the Abyss")),
    Genre("romance", "ring", (0.95, 0.80, 0.85), (0.85, 0.20, 0.40), (1.00, 0.95, 0.70),
          ("Tender", "Sweet", "Endless", "Secret", "Golden", "Lovely"),
          ("Kiss", "Heart", "Promise", "Letter", "Rose", "Wedding"),
          ("Paris", "Verona", "Séville", "Amalfi")),
    Genre("scifi", "grid", (0.03, 0.06, 0.20), (0.10, 0.85, 0.95), (0.80, 0.90, 1.00),
          ("Quantum", "Orbital", "Cyber", "Stellar", "Neural", "Atomic"),
          ("Android", "Nebula", "Reactor", "Starship", "Protocol", "Colony"),
          ("Mars", "Titan", "Kepler-9", "Ångström Station")),
    Genre("western", "mountain", (0.95, 0.70, 0.35), (0.45, 0.25, 0.10), (0.20, 0.10, 0.05),
          ("Dusty", "Lonesome", "Wild", "Rusty", "Outlaw", "Sundown"),
          ("Rider", "Sheriff", "Canyon", "Saloon", "Stallion", "Gunslinger"),
          ("Tombstone", "El Paso", "Santa Fé", "Río Bravo")),
    Genre("comedy", "dots", (1.00, 0.90, 0.20), (0.20, 0.55, 0.95), (0.95, 0.30, 0.30),
          ("Silly", "Crazy", "Awkward", "Goofy", "Happy", "Wacky"),
          ("Wedding", "Roommate", "Vacation", "Party", "Uncle", "Dog"),
          ("Vegas", "the Office", "Düsseldorf", "Camp Kookamunga")),
    Genre("fantasy", "cross", (0.25, 0.10, 0.40), (0.95, 0.80, 0.20), (0.60, 0.90, 0.70),
          ("Enchanted", "Ancient", "Elven", "Mystic", "Royal", "Frozen"),
          ("Dragon", "Sword", "Crown", "Wizard", "Throne", "Prophecy"),
          ("Eldoria", "Mirkwood", "Þórsmörk", "the Northern Isles")),
    Genre("mystery", "diagonal", (0.30, 0.33, 0.30), (0.05, 0.25, 0.15), (0.85, 0.85, 0.60),
          ("Hidden", "Missing", "Final", "Silent", "Lost", "Twelfth"),
          ("Clue", "Detective", "Witness", "Alibi", "Cipher", "Suspect"),
          ("Baker Street", "Orient", "Montréal", "the Manor")),
    Genre("nature", "stripes", (0.55, 0.80, 0.95), (0.15, 0.55, 0.20), (0.95, 0.95, 0.90),
          ("Wild", "Great", "Green", "Deep", "Living", "Blue"),
          ("Forest", "Ocean", "River", "Planet", "Glacier", "Meadow"),
          ("Borneo", "the Arctic", "Patagonia", "Tromsø")),
)

TEMPLATES: tuple[str, ...] = (
    "The {adj} {noun}",
    "{adj} {noun}",
    "{noun} of {place}",
    "The {noun} of {place}",
    "{adj} {noun}: {place}",
    "{noun}! {noun2}?",
    "{adj} {noun} II",
    "Return to {place}…",
    "{noun} & {noun2}",
    "{noun}'s {noun2}",
    "{adj} {noun} — {place}",
    "A {adj} {noun} in {place}",
)


def genres_for(num_genres: int) -> tuple[Genre, ...]:
    if not 2 <= num_genres <= len(GENRES):
        raise ValueError(f"world.num_genres: got {num_genres}; allowed 2..{len(GENRES)}")
    return GENRES[:num_genres]


def make_title(genre: Genre, rng: np.random.Generator) -> str:
    """One title from the grammar, drawn with `rng` (so a seed fixes the catalogue)."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    nouns = rng.choice(len(genre.nouns), size=2, replace=False)
    return template.format(
        adj=genre.adjectives[rng.integers(len(genre.adjectives))],
        noun=genre.nouns[nouns[0]],
        noun2=genre.nouns[nouns[1]],
        place=genre.places[rng.integers(len(genre.places))],
    )


def unique_titles(genre: Genre, count: int, rng: np.random.Generator, taken: set[str]) -> list[str]:
    """`count` titles not in `taken` (updated); sequel numerals keep them unique once the grammar runs dry."""
    titles: list[str] = []
    attempts = 0
    while len(titles) < count:
        title = make_title(genre, rng)
        attempts += 1
        if title in taken and attempts > 20 * count:
            title = f"{title} {len(taken) + 2}"
        if title not in taken:
            taken.add(title)
            titles.append(title)
    return titles
