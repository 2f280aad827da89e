from fractions import Fraction

from folkrnn.schemas import vocab

# The folk-rnn v2 vocabulary as published with the model (seed article), in index order.
PUBLISHED = [
    "d'", "=A,", "^c'", "=e", "=d", "=g", "=f", "=a", "=c", "=b", "_G", "_E", "_D", "_C", "_B", "_A",
    "2<", "2>", "=E", "=D", "_B,", "=F", "=A", "4", "=C", "=B", "_g", "8", "_e", "_d", "_c", "<", "_a",
    "(9", "|2", "D", "|1", "(2", "(3", "|:", "(7", "(4", "(5", ":|", "9", "3/2", "3/4", "=f'", "2", "d",
    "_E,", "B,", "16", "|", "^A,", "b'", "_e'", "M:9/8", "E,", "</s>", "3", "7", "^F,", "=G,", "C", "G",
    "e'", "_d'", "^f'", "[", "b", "c", "z", "g", "^G,", "=F,", "K:Cmin", "K:Cmix", "=c'", "C,", "<s>",
    "]", "=G", "M:12/8", "6", "=E,", "K:Cmaj", ">", "B", "F", "c'", "^C,", "5/2", "G,", "f", "=e'", "_b",
    "_A,", "F,", "/2>", "/2<", "f'", "M:6/8", "4>", "M:4/4", "A,", "M:2/4", "=C,", "5", "M:3/4", "12",
    "M:3/2", "K:Cdor", "A", "E", "a'", "(6", "^A", "^C", "^D", "^F", "^G", "a", "g'", "D,", "/4", "e",
    "/3", "7/2", "=B,", "/8", "^a", "^c", "^d", "/2", "^f", "^g",
]


def test_vocabulary_is_the_published_list_in_order():
    assert list(vocab.TOKENS) == PUBLISHED
    assert vocab.VOCAB_SIZE == 137


def test_documented_ids():
    ids = vocab.TOKEN_TO_ID
    assert (ids["</s>"], ids["<s>"], ids["K:Cmaj"], ids["M:4/4"]) == (59, 80, 86, 104)


def test_tokens_are_plain_ascii():
    assert all(t.isascii() for t in vocab.TOKENS)


def test_every_token_has_exactly_one_class():
    for token in vocab.TOKENS:
        assert sum(token in members for members in vocab.TOKEN_CLASSES.values()) == 1, token


def test_classes():
    assert vocab.token_class("^c'") == "pitch"
    assert vocab.token_class("/2>") == "broken"
    assert vocab.token_class("3/2") == "duration"
    assert vocab.DURATIONS["/2"] == Fraction(1, 2) and vocab.DURATIONS["7/2"] == Fraction(7, 2)
    assert len(vocab.PITCH_TOKENS) == 84 and len(vocab.TUPLET_TOKENS) == 7  # (2 .. (9, no (8


def test_encode_decode():
    tokens = ["M:6/8", "K:Cmin", "|:", "G", "c", "2", ":|"]
    assert vocab.decode(vocab.encode(tokens)) == tokens
