"""The compose page's sampler session: one model loaded once, one tune sampled per request.

A request is what ``folkrnn generate`` takes for one tune: the same prime (``build_prime`` reads
the meter, the mode and a prime of tokens or ABC, and checks its bars), the same checks of
``--form`` and ``--bars-per-part`` and of the prime against the well-formed grammar, the same
``RunSettings`` and sampler. Sampling is reproducible by (weights, seed, tune number, settings)
and the same for any batch, so the page's tune ``N`` with seed ``S`` is ``folkrnn generate CKPT
--numbers N --seed S`` with the same settings (``command_line`` writes that command).

One tune is sampled at a time (a lock): the model's threads are not shared between requests.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from folkrnn.schemas.errors import UsageError
from folkrnn.schemas.vocab import METERS, MODES

MAX_TOKENS = 1000  # generate's default --max-tokens
MAX_PRIME = 2000  # characters of a prime
MAX_SEED = 2**63 - 1
RESULTS_CACHED = 64
# generate's flags -> the compose form's field names, for its messages
FIELD_NAMES = {"--meter": "meter", "--mode": "mode", "--prime": "prime", "--form": "form",
               "--bars-per-part": "bars per part", "--well-formed": "well-formed", "--max-tokens": "the length limit",
               "--temperature": "temperature", "--numbers": "tune number"}
FLAG = re.compile(r"--[a-z-]+")


@dataclass(frozen=True)
class Request:
    """One compose request, checked: what ``folkrnn generate`` takes for one tune."""

    number: int = 1
    seed: int = 0
    temperature: float = 1.0
    meter: str = ""  # "": the model chooses
    mode: str = ""
    prime: str = ""  # tokens or ABC
    well_formed: bool = True
    form: str = ""  # with well_formed: AABB ... ("": the model's choice)
    bars_per_part: str = "8"

    def generate_flags(self) -> list[str]:
        """``folkrnn generate``'s flags for this tune."""
        flags = ["--numbers", str(self.number), "--seed", str(self.seed), "--temperature", f"{self.temperature:g}"]
        flags += ["--meter", self.meter] if self.meter else []
        flags += ["--mode", self.mode] if self.mode else []
        flags += ["--prime", self.prime] if self.prime else []
        if self.well_formed:
            flags += ["--well-formed"]
            if self.form:
                flags += ["--form", self.form, "--bars-per-part", self.bars_per_part]
        return flags


def web_message(text: str) -> str:
    """A generate message with its flags named as the compose form's fields."""
    return FLAG.sub(lambda m: FIELD_NAMES.get(m.group(0), m.group(0)), text)


def _integer(query: Mapping[str, str], name: str, label: str, default: int, low: int, high: int) -> int:
    text = query.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{label} must be a whole number, not {text[:40]!r}") from None
    if not low <= value <= high:
        raise UsageError(f"{label} must be from {low} to {high}, got {value}")
    return value


def parse_request(query: Mapping[str, str]) -> Request:
    """The compose form's fields as a Request; a UsageError says what is wrong with which field."""
    number = _integer(query, "number", "tune number", 1, 1, 10**12)
    seed = _integer(query, "seed", "seed", 0, 0, MAX_SEED)
    text = query.get("temperature", "").strip() or "1"
    try:
        temperature = float(text)
    except ValueError:
        raise UsageError(f"temperature must be a number such as 1 or 0.8, not {text[:40]!r}") from None
    if not 0.01 <= temperature <= 10:  # generate's bounds (also refuses nan)
        raise UsageError(f"temperature must be between 0.01 and 10, got {text[:40]}")
    meter, mode = query.get("meter", "").strip(), query.get("mode", "").strip()
    if meter and meter not in METERS:
        raise UsageError(f"unknown meter {meter[:40]!r}; the model's meters are {', '.join(METERS)}")
    if mode and mode not in MODES:
        raise UsageError(f"unknown mode {mode[:40]!r}; the model's modes are {', '.join(MODES)}")
    prime = query.get("prime", "").strip()
    if len(prime) > MAX_PRIME:
        raise UsageError(f"the prime is {len(prime)} characters long; at most {MAX_PRIME}")
    # a form sent without the box ticked means "not well-formed"; the first visit has it ticked
    form = query.get("form", "").strip().upper()
    # as generate's --form, a form implies well-formed
    well_formed = bool(form) or (query.get("well_formed", "") == "on" if "compose" in query else True)
    bars = (query.get("bars_per_part", "").strip() or "8") if form else "8"
    if len(form) > 26 or len(bars) > 100:
        raise UsageError("the form or the bars per part are too long")
    return Request(number, seed, temperature, meter, mode, prime, well_formed, form, bars)


@dataclass
class Composed:
    """A sampled tune: its tokens, as ``folkrnn generate`` writes its row, and the prime's notes."""

    request: Request
    tokens: list[str]
    truncated: bool
    abc: str  # the row's abc: what `folkrnn generate --numbers` prints
    notes: list[str]


class Composer:
    """A checkpoint's model, loaded once, sampling one tune a request."""

    def __init__(self, checkpoint: str, threads: int = 1) -> None:
        import torch

        from folkrnn.model.checkpoint import checkpoint_id
        from folkrnn.model.generate import load_named_model, load_sampler

        if threads:
            torch.set_num_threads(threads)
        self.checkpoint = checkpoint
        model, self.name = load_named_model(checkpoint)
        self.checkpoint_id = checkpoint_id(checkpoint)
        self.sampler = load_sampler(checkpoint, "fp32", "cpu", model)
        self._lock = threading.Lock()
        self._results: OrderedDict[Request, Composed] = OrderedDict()

    def compose(self, request: Request) -> Composed:
        """The tune of ``request`` (a UsageError for a prime or a form generate would refuse)."""
        with self._lock:
            if request in self._results:
                self._results.move_to_end(request)
                return self._results[request]
            composed = self._sample(request)
            self._results[request] = composed
            while len(self._results) > RESULTS_CACHED:
                self._results.popitem(last=False)
            return composed

    def _sample(self, request: Request) -> Composed:
        from folkrnn.model.generate import RunSettings, tune_row
        from folkrnn.model.sample import sample_in_order
        from folkrnn.pipeline.generate import build_prime, check_prime_for_grammar, check_structure

        args = argparse.Namespace(form=request.form, bars_per_part=request.bars_per_part, max_tokens=MAX_TOKENS,
                                  well_formed=request.well_formed, bars=())
        said = io.StringIO()
        try:
            # build_prime says on stderr what it chose (the meter a prime's bars imply): shown on the page
            with contextlib.redirect_stderr(said):
                check_structure(args)
                prime = build_prime(request.meter or None, request.mode or None, request.prime or None)
            if request.well_formed:
                check_prime_for_grammar(args, prime)
        except UsageError as err:
            raise UsageError(web_message(str(err))) from None
        if len(prime) >= MAX_TOKENS:  # the sampler's own limit (generate would stop on it with a ValueError)
            raise UsageError(f"the prime is {len(prime)} tokens long; a tune is cut at {MAX_TOKENS} tokens, so "
                             f"give at most {MAX_TOKENS - 1}")
        settings = RunSettings(checkpoint_id=self.checkpoint_id, num_tunes=request.number, seed=request.seed,
                               temperature=request.temperature, prime=tuple(prime), max_tokens=MAX_TOKENS,
                               well_formed=request.well_formed, form=args.form,
                               bars_per_part=args.bars if args.form else ())
        try:
            tune = sample_in_order(self.sampler, [request.number], batch_size=1, **settings.sample_kwargs())[0]
        except ValueError as err:  # what the sampler refuses is the request's, never a crash of the page
            raise UsageError(web_message(str(err))) from None
        row = tune_row(tune, settings)
        notes = [web_message(line.removeprefix("folkrnn generate: ")) for line in said.getvalue().splitlines()
                 if line.strip()]
        return Composed(request, row["tokens"], row["truncated"], row["abc"], notes)

    def command_line(self, request: Request) -> str:
        """The ``folkrnn generate`` command that prints this tune."""
        shown = os.path.relpath(self.checkpoint)  # model/demo.pt, as a user in the repository types it
        shown = self.checkpoint if shown.startswith("..") else shown
        return shlex.join(["folkrnn", "generate", shown, *request.generate_flags()])
