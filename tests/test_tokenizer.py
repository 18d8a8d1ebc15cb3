from backend.diffusion.tokenizer import build_clip_tokenizer


def test_every_word_is_one_token_even_when_early_merges_split_it():
    words = ["an", "cyan", "right", "triangle", "ring", "a", "red", "circle"]  # "r"+"i" merges early for "right"
    tokenizer = build_clip_tokenizer(words)
    for word in words:
        assert tokenizer.tokenize(word) == [f"{word}</w>"]


def test_sentences_map_to_word_ids_and_unknown_characters_to_unk():
    tokenizer = build_clip_tokenizer(["a", "red", "circle"], model_max_length=8)
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == ["a</w>", "red</w>", "circle</w>"]
    assert tokenizer.unk_token_id in tokenizer("a red z").input_ids
