"""The one exception type of the pure ABC functions: a tune that cannot become tokens, and why."""


class TuneRejected(Exception):
    """Raised by the pure ABC functions; the ingest turns it into a reject row.

    ``stage`` says which step refused (header, clean, tokenize, transpose), ``reason`` is a
    stable code (the rejects table groups by it) and ``detail`` tells a person what to fix.
    """

    def __init__(self, stage: str, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
