"""A CLIP tokenizer over a closed vocabulary, so small models need no downloaded vocab files."""

import json
from collections.abc import Iterable

from transformers import CLIPTokenizer

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def build_clip_tokenizer(words: Iterable[str], model_max_length: int = 16) -> CLIPTokenizer:
    """Build a CLIPTokenizer whose BPE merges spell each word as one token.

    CLIP's BPE splits a word into characters, the last one marked `</w>`, and merges
    pairs by rank. Merging left to right, one merge per prefix, spells most words; every
    intermediate piece is in the vocabulary, so no input maps to unknown except characters
    outside the words. A pair merged early for one word ("r" + "i" for "right") can leave a
    later word ("triangle") in pieces no merge joins: `_complete_merges` appends the merges
    those words still need.
    """
    words = sorted({w.lower() for w in words})
    pieces: list[str] = []
    merges: list[tuple[str, str]] = []
    seen_pieces: set[str] = set()
    seen_merges: set[tuple[str, str]] = set()

    def add_piece(piece: str) -> None:
        if piece not in seen_pieces:
            seen_pieces.add(piece)
            pieces.append(piece)

    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        for symbol in symbols:
            add_piece(symbol)
            add_piece(symbol.removesuffix("</w>"))
        prefix = symbols[0]
        for symbol in symbols[1:]:
            merge = (prefix, symbol)
            prefix += symbol
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            add_piece(prefix)
    vocab = {piece: i for i, piece in enumerate(pieces)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return _complete_merges(CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length), words)


def _complete_merges(tokenizer: CLIPTokenizer, words: list[str]) -> CLIPTokenizer:
    """Append BPE merges until each of `words` is one token.

    Merges appended last fire only when no other merge applies, so they never change a
    word that already tokenizes whole.
    """
    vocab = dict(tokenizer.get_vocab())
    merges = [tuple(m) for m in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]
    for word in words:
        while len(pieces := tokenizer.tokenize(word)) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=tokenizer.model_max_length)
    return tokenizer
