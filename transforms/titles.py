"""Deterministic tune titles: "The <Adjective> <Noun> <Type>" from a hash of the tune number.

Generated tunes have no titles, and the session books need one per tune. A title is a pure
function of the tune number (and the meter, which picks a fitting tune type), so tune 488 has
the same title in every volume, table and PDF, on every machine and Python version: the hash is
SHA-1 of the decimal number, never Python's salted ``hash()``.

68 adjectives x 68 nouns give 4,624 pairs, so titles repeat across tens of
thousands of tunes, as they do in real collections; the tune number stays the identifier.
The word lists are part of the output format: changing them changes every title.
"""

from __future__ import annotations

import hashlib

ADJECTIVES: tuple[str, ...] = (
    "Amber", "Ancient", "Blue", "Bold", "Bright", "Busy", "Calm", "Clever", "Cosy", "Crooked",
    "Curious", "Dancing", "Distant", "Dusty", "Early", "Electric", "Fair", "Gentle", "Golden",
    "Green", "Happy", "Hidden", "Humble", "Idle", "Jolly", "Kind", "Lively", "Lonely", "Lucky",
    "Merry", "Misty", "Modest", "Nimble", "Noisy", "Old", "Patient", "Plucky", "Proud", "Quiet",
    "Rambling", "Restless", "Rocky", "Rolling", "Rosy", "Rusty", "Salty", "Silver", "Sleepy",
    "Slow", "Speedy", "Steady", "Stormy", "Sunny", "Swift", "Tall", "Tidy", "Tiny", "Twisted",
    "Wandering", "Wee", "West", "Whistling", "Wild", "Windy", "Winter", "Wise", "Witty", "Young",
)
NOUNS: tuple[str, ...] = (
    "Abacus", "Algorithm", "Anvil", "Badger", "Banjo", "Bicycle", "Bramble", "Bridge", "Candle",
    "Cassette", "Circuit", "Compiler", "Cottage", "Curlew", "Diode", "Fiddler", "Gate", "Harbour",
    "Heron", "Hillside", "Kettle", "Kingfisher", "Lantern", "Lark", "Lighthouse", "Mainframe",
    "Meadow", "Mill", "Modem", "Moth", "Orchard", "Otter", "Parser", "Piper", "Processor",
    "Puffin", "Quarry", "Rabbit", "Raven", "Robot", "Router", "Saddle", "Sailor", "Server",
    "Shepherd", "Signal", "Spinner", "Sprocket", "Stile", "Tinker", "Transistor", "Turnip",
    "Valve", "Wagon", "Weaver", "Wheel", "Widget", "Willow", "Wren", "Zither", "Kite", "Ferry",
    "Thistle", "Teapot", "Pebble", "Lamp", "Ladder", "Compass",
)
# Tune types that fit each meter of the vocabulary; other or unknown meters get "Tune".
TYPES: dict[str, tuple[str, ...]] = {
    "2/4": ("Polka", "March", "Single Reel"),
    "3/4": ("Waltz", "Mazurka", "Air"),
    "4/4": ("Reel", "Hornpipe", "Barndance", "Strathspey"),
    "6/8": ("Jig", "Double Jig", "March"),
    "9/8": ("Slip Jig", "Hop Jig"),
    "12/8": ("Slide", "Single Jig"),
    "3/2": ("Hornpipe", "Air"),
}


def _digest(number: int) -> int:
    return int.from_bytes(hashlib.sha1(str(int(number)).encode("ascii")).digest()[:8], "big")


def title_for(number: int, meter: str | None = None, tune_type: str | None = None) -> str:
    """The title of tune ``number``, e.g. ``title_for(488, "6/8")`` is "The Whistling Piper Double Jig".

    Adjective and noun depend on the number only; the type word on the meter as well
    ("Tune" when the meter is unknown), so a tune keeps its title wherever it appears. Given the
    tune's type (``folkrnn.transforms.tune_types``), the type word is its name, so a book does not
    call a reel a hornpipe: ``title_for(488, "6/8", "jig")`` is "The Whistling Piper Jig".
    """
    h = _digest(number)
    adjective = ADJECTIVES[h % len(ADJECTIVES)]
    noun = NOUNS[(h // len(ADJECTIVES)) % len(NOUNS)]
    types = TYPES.get(meter or "", ("Tune",))
    kind = tune_type.title() if tune_type else types[(h // (len(ADJECTIVES) * len(NOUNS))) % len(types)]
    return f"The {adjective} {noun} {kind}"
