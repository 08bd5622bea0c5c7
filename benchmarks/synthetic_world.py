"""The generative model behind benchmarks/synthetic_logs.py: latent users and items, who picks what, item looks.

Users u and items v are latent vectors in R^16 (u.v has unit variance). Each item's genres are the genre directions
g its v points along most (the first is its primary genre). An item's popularity is Zipf-like in a random rank; a
user's activity is `min + log-normal`, scaled to the real rows per user and capped at 30% of the catalogue (what the
cap cuts goes to lighter users, up to twice their share; at tiny fractions, where the catalogue is small, the rows
can still fall short of the target). Each user draws candidate items: a genre from softmax(3 u.g), then an item of
that genre by popularity (10% of draws uniform over the catalogue), deduplicated, with more rounds for users still
short; the user keeps the candidates with the largest 1.5 u.v + Gumbel noise, i.e. samples without replacement
tilted to their taste. Each user is active over a log-normal span (median a month) starting at a uniform time in the
dataset's years. An item's cover shows its look: background and foreground colours are projections of v and the
pattern (stripes, square, checks) follows its primary genre, so a CLIP-like embedding of the cover carries v.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

DIM = 16  # latent width of users and items
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
WORDS = ("Shadow", "Garden", "River", "Dragon", "Winter", "Silver", "Crown", "Ocean", "Forest", "Night", "City",
         "Secret", "Empire", "Storm", "Quiet", "Golden", "Lost", "Star", "Heart", "Iron", "Last", "Summer")
CHUNK_ROWS = 1_500_000  # rows generated (and written) at a time
MIN_USERS, MIN_ITEMS = 100, 100  # floors for tiny fractions


@dataclass(frozen=True)
class Shape:
    """One dataset's real size (fraction 1.0) and the knobs of its generator."""

    name: str
    users: int
    items: int
    rows: int
    min_per_user: int  # fewest rows a user has
    activity_sigma: float  # log-normal sigma of rows per user above the minimum
    zipf_alpha: float  # popularity ~ 1 / (rank + 10) ** alpha
    first_day: str  # timestamps fall between these days (UTC)
    last_day: str
    genre_beta: float = 3.0  # softmax temperature of a user's genre choice (u.g)
    taste_beta: float = 1.5  # weight of u.v in which candidates a user keeps
    uniform_share: float = 0.1  # share of candidate draws uniform over the catalogue
    oversample: float = 3.0  # candidates drawn per kept row (first round)
    max_share: float = 0.3  # most of the catalogue one user may rate


ML_LATEST = Shape("ml-latest", 330_975, 86_537, 33_832_162, 15, 1.3, 1.1, "1995-01-09", "2023-07-20")
PIXELREC = Shape("pixelrec", 1_000_000, 200_000, 10_000_000, 5, 1.2, 1.0, "2021-01-01", "2022-06-30")


@dataclass
class World:
    """Latent users and items, the item sampler and each user's activity for one (shape, fraction, seed)."""

    shape: Shape
    users: np.ndarray  # (n_users, DIM) float32 tastes u
    items: np.ndarray  # (n_items, DIM) float32 items v
    user_bias: np.ndarray  # (n_users,) standard normal
    item_bias: np.ndarray  # (n_items,) standard normal
    genre_dirs: np.ndarray  # (G, DIM) unit genre directions g
    genre_scores: np.ndarray  # (n_items, G) v.g
    look: np.ndarray  # (DIM, 6) projections of v onto the cover's background and foreground RGB
    by_genre: np.ndarray  # (n_items,) item indices sorted by primary genre, then popularity
    genre_cdf: np.ndarray  # (n_items,) in by_genre order: genre k's popularity CDF spans (k, k+1]
    genre_open: np.ndarray  # (G,) bool: the genre has items
    popularity: np.ndarray  # (n_items,) probabilities
    counts: np.ndarray  # (n_users,) rows per user
    start: np.ndarray  # (n_users,) first active second
    span: np.ndarray  # (n_users,) active seconds


def sizes(shape: Shape, fraction: float) -> tuple[int, int, int]:
    """(users, items, target rows) at `fraction` of the real size; users and items floored for tiny fractions."""
    users, items = max(MIN_USERS, round(shape.users * fraction)), max(MIN_ITEMS, round(shape.items * fraction))
    return users, items, round(users * shape.rows / shape.users)  # rows per user as in the real data


def build_world(shape: Shape, fraction: float, seed: int) -> World:
    """Draw the latent world (see the module docstring); deterministic for (shape, fraction, seed)."""
    rng = np.random.default_rng([seed, 0])
    n_users, n_items, rows = sizes(shape, fraction)
    scale = DIM**-0.25  # so that u.v has unit variance
    users = (rng.standard_normal((n_users, DIM)) * scale).astype(np.float32)
    items = (rng.standard_normal((n_items, DIM)) * scale).astype(np.float32)
    dirs = rng.standard_normal((len(GENRES), DIM))
    dirs = (dirs / np.linalg.norm(dirs, axis=1, keepdims=True)).astype(np.float32)
    scores = items @ dirs.T  # (n_items, G)
    rank = rng.permutation(n_items)  # popularity rank, independent of the latent
    popularity = 1.0 / (rank + 10.0) ** shape.zipf_alpha
    popularity /= popularity.sum()
    by_genre = np.lexsort((rank, scores.argmax(1)))
    cdf, open_ = _genre_cdf(popularity[by_genre], scores.argmax(1)[by_genre])
    counts = _activity(rng, shape, n_users, rows, cap=max(shape.min_per_user, int(shape.max_share * n_items)))
    t0, t1 = (pd.Timestamp(day, tz="UTC").timestamp() for day in (shape.first_day, shape.last_day))
    start = t0 + rng.random(n_users) * (t1 - t0)
    span = np.minimum(rng.lognormal(np.log(30 * 86400), 1.5, n_users), t1 - start)  # median a month
    biases = rng.standard_normal(n_users), rng.standard_normal(n_items)
    look = rng.standard_normal((DIM, 6)).astype(np.float32)
    return World(shape, users, items, *biases, dirs, scores, look, by_genre, cdf, open_, popularity, counts,
                 start, span)


def _genre_cdf(pop_sorted: np.ndarray, genre_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-genre popularity CDFs stacked, genre k's in (k, k+1], so one searchsorted samples any genre."""
    bounds = np.searchsorted(genre_sorted, np.arange(len(GENRES) + 1))  # genre k: [bounds[k], bounds[k+1])
    cdf = np.empty(len(pop_sorted))
    for k in range(len(GENRES)):
        a, b = bounds[k], bounds[k + 1]
        if b > a:
            cum = np.cumsum(pop_sorted[a:b])
            cdf[a:b] = k + cum / cum[-1]
            cdf[b - 1] = k + 1.0  # exact, so a draw of k + 1 lands in genre k
    return cdf, bounds[1:] > bounds[:-1]


def _activity(rng: np.random.Generator, shape: Shape, n_users: int, rows: int, cap: int) -> np.ndarray:
    """Rows per user: min + log-normal scaled to `rows` in total, at most `cap`, stochastically rounded.

    What the cap cuts off the tail goes to the other users (scaling them up by at most 2x), so small catalogues
    still get their rows where they can hold them.
    """
    extra = rng.lognormal(0.0, shape.activity_sigma, n_users)
    budget, room = max(rows - shape.min_per_user * n_users, 0), cap - shape.min_per_user
    scale = first = budget / extra.sum()
    for _ in range(20):
        held = np.minimum(extra * scale, room).sum()
        if held >= 0.999 * budget or scale >= 2 * first:
            break
        scale = min(scale * budget / held, 2 * first)
    extra = np.minimum(extra * scale, room)
    return shape.min_per_user + np.floor(extra + rng.random(n_users)).astype(np.int64)


def user_chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) user ranges of about CHUNK_ROWS rows each."""
    chunk_of = (np.cumsum(counts) - counts) // CHUNK_ROWS
    starts = np.flatnonzero(np.diff(chunk_of, prepend=-1))
    return list(zip(starts.tolist(), [*starts[1:].tolist(), len(counts)]))


# ------------------------------------------------------------------------------------------------ sampling
def pick_items(w: World, rng: np.random.Generator, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, u.v) rows of users lo..hi-1, sorted by (user, item): each user's distinct, taste-tilted picks."""
    need = w.counts[lo:hi]
    keys = _candidate_pool(w, rng, lo, need)  # sorted local_user * n_items + item
    local, item = keys // len(w.items), keys % len(w.items)
    affinity = _affinity(w.users, lo + local, w.items, item)
    key = w.shape.taste_beta * affinity + rng.gumbel(size=len(keys))
    # By user, best key first: local is sorted already, so add a (0, 1) term that falls as the key grows.
    order = np.argsort(local + 1.0 / (1.0 + np.exp(key)), kind="stable")  # local[order] == local
    first = np.searchsorted(local, np.arange(len(need)))  # each user's first position
    keep = np.zeros(len(keys), dtype=bool)
    keep[order] = np.arange(len(order)) - first[local] < need[local]  # rank within the user < rows wanted
    return lo + local[keep], item[keep], affinity[keep]


def _candidate_pool(w: World, rng: np.random.Generator, lo: int, need: np.ndarray) -> np.ndarray:
    """Sorted distinct keys local_user * n_items + item, at least need[u] per user; users short redraw, doubled."""
    n_items, factor = len(w.items), w.shape.oversample
    is_open, pool, done = need > 0, np.empty(0, np.int64), []
    for _ in range(12):  # the uniform share fills any user within a few rounds; 12 only bounds a bad case
        short = np.flatnonzero(is_open)
        have = np.bincount(pool // n_items, minlength=len(need))
        draws = np.ceil((need[short] - have[short]) * factor).astype(np.int64)
        pool = _sorted_unique(np.concatenate([pool, _draw(w, rng, lo, short, draws)]))
        full = np.bincount(pool // n_items, minlength=len(need)) >= need
        closing = full[pool // n_items]
        done.append(pool[closing])
        pool, is_open = pool[~closing], is_open & ~full
        if not is_open.any():
            break
        factor *= 2
    return np.sort(np.concatenate([*done, pool]))


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """np.unique by sorting (numpy 2's hash-based np.unique is several times slower on these int64 keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]


def _draw(w: World, rng: np.random.Generator, lo: int, short: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Candidate keys: per draw a genre from softmax(beta u.g), then an item of it by popularity; some uniform."""
    logits = w.shape.genre_beta * (w.users[lo + short] @ w.genre_dirs.T)  # (short, G)
    prob = np.exp(logits - logits.max(1, keepdims=True)) * w.genre_open
    cum = np.cumsum(prob, axis=1)
    cum /= cum[:, -1:]  # exactly 1 from the last open genre on, so no draw lands on a closed (empty) one
    stacked = (np.arange(len(short))[:, None] + cum).ravel()  # user j's genre CDF spans (j, j+1]
    who = np.repeat(np.arange(len(short)), draws)
    genre = np.searchsorted(stacked, who + 1.0 - rng.random(len(who))) - who * len(GENRES)
    item = w.by_genre[np.searchsorted(w.genre_cdf, genre + 1.0 - rng.random(len(who)))]
    uniform = rng.random(len(who)) < w.shape.uniform_share
    item[uniform] = rng.integers(0, len(w.items), int(uniform.sum()))
    return short[who] * len(w.items) + item


def _affinity(users: np.ndarray, u: np.ndarray, items: np.ndarray, i: np.ndarray) -> np.ndarray:
    """u.v of row pairs, in blocks so the gathered (block, DIM) arrays stay small."""
    out, step = np.empty(len(u), dtype=np.float32), 1 << 20
    for s in range(0, len(u), step):
        out[s : s + step] = np.einsum("ij,ij->i", users[u[s : s + step]], items[i[s : s + step]])
    return out


def timestamps(w: World, rng: np.random.Generator, user: np.ndarray) -> np.ndarray:
    """Whole seconds, uniform over each row's user's active span."""
    return (w.start[user] + rng.random(len(user)) * w.span[user]).astype(np.int64)


# ------------------------------------------------------------------------------------------------ item text
def genre_strings(w: World, sep: str) -> np.ndarray:
    """Each item's genres joined by `sep`: its primary genre plus up to two more it points along strongly."""
    top = np.argsort(-w.genre_scores, axis=1)[:, :3]  # (n_items, 3)
    strong = np.take_along_axis(w.genre_scores, top, axis=1) > 1.2 * DIM**-0.25  # ~1.9 genres an item, as GroupLens
    names = np.array(GENRES, dtype=object)
    text = names[top[:, 0]]
    for k in (1, 2):
        text = text + np.where(strong[:, k], sep + names[top[:, k]], "")
    return text


def titles(rng: np.random.Generator, n: int) -> np.ndarray:
    """'Silver River 12'; about 8% 'Silver River, The' and 1% with a quoted word, so CSV quoting is exercised."""
    words = np.array(WORDS, dtype=object)
    first, second = words[rng.integers(0, len(WORDS), n)], words[rng.integers(0, len(WORDS), n)]
    number = np.arange(1, n + 1).astype(str).astype(object)
    kind = rng.random(n)
    text = np.where(kind < 0.08, first + " " + second + ", The", first + " " + second + " " + number)
    return np.where(kind > 0.99, '"' + first + '" ' + second + " " + number, text)


# ------------------------------------------------------------------------------------------------ item looks
def cover_pixels(w: World, seed: int, lo: int, hi: int, size: int) -> np.ndarray:
    """(hi-lo, size, size, 3) uint8 covers: colours from v, pattern from the primary genre, light noise."""
    v = w.items[lo:hi]
    colours = 255.0 / (1.0 + np.exp(-0.8 * (v @ w.look)))  # (B, 6): background RGB, foreground RGB
    y, x = np.mgrid[0:size, 0:size] / size
    masks = np.stack([np.floor(y * 4) % 2 == 0, np.floor(x * 4) % 2 == 0,  # stripes across, stripes down
                      (abs(x - 0.5) < 0.25) & (abs(y - 0.5) < 0.25),  # centred square
                      (np.floor(x * 4) + np.floor(y * 4)) % 2 == 0])  # checks; (4, size, size)
    pattern = masks[w.genre_scores[lo:hi].argmax(1) % 4][..., None]  # (B, size, size, 1)
    image = np.where(pattern, colours[:, None, None, 3:], colours[:, None, None, :3])  # (B, size, size, 3)
    image += np.random.default_rng([seed, 2, lo]).normal(0.0, 6.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)

