"""A CLIP BPE tokenizer trained on the world's texts, through the exact pipeline `CLIPTokenizer` uses.

transformers 5's `CLIPTokenizer` is tokenizers-backed (NFC + whitespace squeeze + lowercase, CLIP's split regex,
byte-level, `</w>` end-of-word suffix). We run texts through that very normaliser and pre-tokeniser, then learn the
merges with a small BPE of our own: the `tokenizers` trainer breaks ties between equally frequent pairs in hash
order, which differs from process to process, and a world build must be the same bytes every time. Every
byte-level symbol is in the vocabulary both bare and with `</w>`, so a letter never seen in training (an accent in a
new title) maps to a real token instead of the unknown token — which is also EOS and would end the title mid-way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"


def pretokenize(texts: Iterable[str]) -> Counter:
    """Word counts after CLIP's own normaliser and pre-tokeniser (byte-level pieces)."""
    pipeline = CLIPTokenizer().backend_tokenizer
    words: Counter = Counter()
    for text in texts:
        normalized = pipeline.normalizer.normalize_str(text)
        words.update(piece for piece, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
    return words


def learn_merges(words: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair; ties go to the smallest pair (deterministic)."""
    corpus = {word: (list(word[:-1]) + [word[-1] + SUFFIX], count) for word, count in words.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for symbols, count in corpus.values():
            for pair in zip(symbols[:-1], symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, (symbols, count) in corpus.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[word] = (merged, count)
    return merges


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """BPE over `texts` with CLIP's pre-processing; returns a ready `CLIPTokenizer` (model_max_length set)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = [BOS, EOS] + alphabet + [symbol + SUFFIX for symbol in alphabet]
    if vocab_size < len(base):
        raise ValueError(f"zoo.vocab_size: got {vocab_size}; must be ≥ {len(base)} (2 special tokens + every byte, "
                         f"bare and word-final)")
    merges = learn_merges(pretokenize(texts), vocab_size - len(base))
    vocab = {token: i for i, token in enumerate(base)}
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
