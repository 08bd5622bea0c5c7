"""A CLIP BPE tokenizer trained on the world's titles, through the exact pipeline `CLIPTokenizer` uses.

transformers 5's `CLIPTokenizer` is tokenizers-backed (NFC + whitespace squeeze + lowercase, CLIP's split regex,
byte-level, `</w>` end-of-word suffix). We train the BPE inside that very pipeline, then add every byte-level
symbol both bare and with `</w>`, so a letter never seen in training (an accent in a new title) still maps to a
real token instead of the unknown token — which is also EOS and would end the title mid-way and break pooling.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """BPE over `texts` with CLIP's pre-processing; returns a ready `CLIPTokenizer` (model_max_length set)."""
    pipeline = CLIPTokenizer().backend_tokenizer  # empty vocab, but CLIP's normaliser and pre-tokeniser
    backend = Tokenizer(models.BPE(unk_token=EOS, continuing_subword_prefix="", end_of_word_suffix="</w>"))
    backend.normalizer, backend.pre_tokenizer = pipeline.normalizer, pipeline.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    backend.train_from_iterator(list(texts), trainer=trainer)
    vocab = dict(backend.get_vocab(with_added_tokens=False))
    for symbol in sorted(alphabet):  # every byte, bare and word-final: nothing maps to the unknown token
        for token in (symbol, symbol + "</w>"):
            if token not in vocab:
                vocab[token] = len(vocab)
    merges = _merges_of(backend)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _merges_of(backend) -> list[tuple[str, str]]:
    import json

    state = json.loads(backend.to_str())
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]


def save_tokenizer(tokenizer: CLIPTokenizer, folder: str | Path) -> None:
    tokenizer.save_pretrained(str(folder))
