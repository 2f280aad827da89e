"""Speed of the pure tune validator (folkrnn.transforms.validator.validate_tokens) on one core.

The tunes are made here from hand-written bar rhythms and forms (reels, jigs with pickups and
endings, waltzes, airs whose double bar splits a bar, hornpipes with tuplets and broken
rhythms, polkas, slip jigs, slides, 3/2 hornpipes), filled with pitches by a seeded generator: deterministic, no data files, and
every tune is checked to be valid before it is timed.
"""

from __future__ import annotations

import random
import time

from folkrnn.transforms.validator import validate_tokens

TARGET_TUNES_PER_S = 5000

PITCHES = ("C", "D", "E", "F", "G", "A", "B", "c", "d", "e", "f", "g", "a", "b", "c'", "G,", "A,", "B,",
           "_B", "^F", "=B", "_e")

# Bar rhythms per meter: P is a pitch slot. Each one fills exactly one bar.
BARS: dict[str, list[str]] = {
    "4/4": ["P P P P P P P P", "P 2 P P P 2 P P", "P > P P > P P P P P", "(3 P P P P P P P P P",
            "[ P P ] 2 P 2 P 4", "P 3 P P 4", "P /2 P /2 P P P 2 P P P"],
    "6/8": ["P P P P P P", "P 2 P P 2 P", "P 3 P 2 P", "P P P P 3", "P 2 P (2 P P"],
    "3/4": ["P 2 P 2 P 2", "P 4 P 2", "P P P P P 2", "P 3 P P 2"],
    "2/4": ["P P P P", "P 2 P P", "P > P P P", "P /2 P /2 P P 2"],
    "9/8": ["P 2 P P 2 P P 2 P", "P P P P P P P P P", "P 3 P 2 P P P P"],
    "12/8": ["P 2 P P 2 P P 2 P P 2 P", "P P P P P P P 2 P P 2 P"],
    "3/2": ["P P P P P P P P P P P P", "P 2 P 2 P 2 P 2 P 2 P 2", "P 3 P P 2 P 2 P 2 P 2"],
}
UNITS = {"4/4": 8, "6/8": 6, "3/4": 6, "2/4": 4, "9/8": 9, "12/8": 12, "3/2": 12}
MODES = ("maj", "min", "dor", "mix")


def fill(rhythm: str, rng: random.Random) -> list[str]:
    return [rng.choice(PITCHES) if t == "P" else t for t in rhythm.split()]


def bars(meter: str, n: int, rng: random.Random) -> list[list[str]]:
    return [fill(rng.choice(BARS[meter]), rng) for _ in range(n)]


def final_bar(meter: str, minus: int = 0) -> list[str]:
    """A cadence on C lasting a full bar, or a full bar less ``minus`` (to complete a pickup)."""
    left = UNITS[meter] - minus
    head = ["G", "2", "E"] if left > 11 else ["G", "E"]  # no 10 or 11 among the duration tokens
    rest = left - (3 if left > 11 else 2)
    return [*head, "C"] + ([str(rest)] if rest != 1 else [])


def join(parts: list[list[str]], bar: str = "|") -> list[str]:
    out: list[str] = []
    for i, part in enumerate(parts):
        if i:
            out.append(bar)
        out.extend(part)
    return out


def aabb(meter: str, rng: random.Random) -> list[str]:
    """Two repeated 8-bar parts: a reel, a hornpipe, a polka, a slip jig ..."""
    a = bars(meter, 7, rng) + [final_bar(meter)]
    b = bars(meter, 7, rng) + [final_bar(meter)]
    return ["|:", *join(a), ":|", "|:", *join(b), ":|"]


def jig_with_pickup(meter: str, rng: random.Random) -> list[str]:
    """A pickup, first and second endings, and a last bar that completes the pickup."""
    pickup = [rng.choice(PITCHES)]
    a = bars(meter, 6, rng)
    e1 = [*bars(meter, 1, rng)[0], "|", *final_bar(meter, 1)]
    e2 = [*bars(meter, 1, rng)[0], "|", *final_bar(meter)]
    b = bars(meter, 7, rng) + [final_bar(meter, 1)]
    return [*pickup, "|:", *join(a), "|1", *e1, ":|", "|2", *e2, "|:", *join(b), ":|"]


def through(meter: str, rng: random.Random) -> list[str]:
    """16 bars, no repeats: a waltz or an air."""
    return ["|", *join(bars(meter, 15, rng) + [final_bar(meter)]), "|"]


def lost_double_bar(meter: str, rng: random.Random) -> list[str]:
    """An air in two parts whose ``||`` the tokens lost: the A part's short last bar and the B
    part's pickup split a bar at a plain bar line (O'Neill's writes many tunes so)."""
    a = bars(meter, 7, rng) + [final_bar(meter, 1)]
    b = bars(meter, 7, rng) + [final_bar(meter, 1)]
    return [rng.choice(PITCHES), "|", *join(a), "|", rng.choice(PITCHES), "|", *join(b), "|"]


FORMS = (aabb, jig_with_pickup, through, lost_double_bar)


def make_tunes(n: int, seed: int = 1) -> list[list[str]]:
    rng = random.Random(seed)
    meters = sorted(BARS)
    tunes = []
    for i in range(n):
        meter = meters[i % len(meters)]
        form = FORMS[(i // len(meters)) % len(FORMS)]
        tunes.append([f"M:{meter}", f"K:C{MODES[i % len(MODES)]}", *form(meter, rng)])
    return tunes


def time_validator(tunes: list[list[str]], repeats: int = 3) -> float:
    """Best wall time of ``repeats`` passes over all tunes."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for tokens in tunes:
            validate_tokens(tokens)
        best = min(best, time.perf_counter() - start)
    return best


def run(n: int = 3000) -> dict:
    tunes = make_tunes(n)
    invalid = [t for t in tunes if not validate_tokens(t).valid]
    if invalid:
        raise AssertionError(f"{len(invalid)} generated tunes are invalid, e.g. {' '.join(invalid[0])}: "
                             f"{validate_tokens(invalid[0]).problems}")
    seconds = time_validator(tunes)
    tokens = sum(len(t) for t in tunes)
    rate = n / seconds
    markdown = "\n".join([
        "| validator (pure function, 1 core, best of 3) | tunes | tokens/tune | seconds | tunes/s | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| validate_tokens | {n} | {tokens / n:.0f} | {seconds:.3f} | {rate:.0f} | {tokens / seconds:.0f} |",
        "",
        f"Target: at least {TARGET_TUNES_PER_S} tunes/s ({'met' if rate >= TARGET_TUNES_PER_S else 'NOT met'}).",
    ])
    return {"name": "Validator", "markdown": markdown, "tunes": n, "tokens_per_tune": tokens / n,
            "seconds": seconds, "tunes_per_s": rate, "tokens_per_s": tokens / seconds,
            "target_met": rate >= TARGET_TUNES_PER_S}


if __name__ == "__main__":
    print(run()["markdown"])
