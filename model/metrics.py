"""What a training run records as it goes: metrics.csv (one row per step and per validation) and
loss.png, both written atomically."""

from __future__ import annotations

import csv
import io
import os

from folkrnn.schemas.files import atomic_write

METRICS_FIELDS = ["step", "epoch", "split", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s", "grad_norm"]


class MetricsLog:
    """metrics.csv: one row per train step and per validation; on resume, rows after the
    checkpoint's step (work that was lost) are dropped first."""

    def __init__(self, path: str, resume_step: int | None, validated_at_resume: bool = True):
        self.path = path
        self.rows: list[dict] = []
        if resume_step is not None and os.path.exists(path):
            with open(path, newline="") as handle:
                # A validation row at the resume step is kept only if the checkpoint came after it.
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) < resume_step or (
                    int(r["step"]) == resume_step and (r["split"] == "train" or validated_at_resume))]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, METRICS_FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(path, text.getvalue())
        self._handle = self._named(lambda: open(path, "a", newline=""))
        self._writer = csv.DictWriter(self._handle, METRICS_FIELDS)

    def _named(self, action):
        """Run ``action``; a failed write (no space, file too large) carries no file name: add ours."""
        try:
            return action()
        except OSError as err:
            if err.filename is not None or err.errno is None:
                raise
            raise OSError(err.errno, err.strerror or str(err), self.path) from err

    def write(self, row: dict) -> None:
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        self.rows.append(row)
        self._writer.writerow(row)
        self._named(self._handle.flush)

    def close(self) -> None:
        self._named(self._handle.close)


def plot_losses(rows: list[dict], path: str) -> None:
    """Loss curve PNG: train loss per step (faint) and per epoch, valid loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(int(r["step"]), float(r["loss"]), int(r["epoch"])) for r in rows if r["split"] == "train"]
    valid = [(int(r["step"]), float(r["loss"])) for r in rows if r["split"] == "valid"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        steps, losses, epochs = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
        by_epoch: dict[int, list] = {}
        for s, loss, e in train:
            by_epoch.setdefault(e, []).append((s, loss))
        ends = [(max(s for s, _ in v), sum(x for _, x in v) / len(v)) for _, v in sorted(by_epoch.items())]
        ax.plot(*zip(*ends), color="tab:blue", marker=".", label="train (epoch mean)")
    if valid:
        ax.plot(*zip(*valid), color="tab:orange", marker="o", label="valid (dropout off)")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.set_title("folk-rnn training loss")
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    atomic_write(path, image.getvalue())
