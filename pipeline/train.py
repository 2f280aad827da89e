"""``folkrnn train``: train the folk-rnn v2 network on the ingest's tunes (or a folk-rnn text file)."""

from __future__ import annotations

import argparse
import os

from folkrnn.schemas.errors import UsageError

HELP = "Train the folk-rnn v2 LSTM on tokenized tunes (resumable; checkpoints, metrics.csv, loss.png)"

MODEL_OPTIONS = {"layers": "n_layers", "units": "n_units", "dropout": "dropout"}
TRAIN_OPTIONS = ("batch_size", "lr", "seed", "checkpoint_every", "valid_fraction", "clip_mode", "clip", "max_epochs",
                 "max_steps", "device", "precision", "where", "name", "add_tunes")


def with_added_tunes(data, path: str, only_valid: bool):
    """``data`` with every tune of the Parquet dataset ``path`` (its ``token_ids``; e.g. a generate
    run's folder) appended to the training split, in number order."""
    import pyarrow as pa

    from folkrnn.model.data import TuneSet, tunes_from_table
    from folkrnn.pipeline.datasets import arrow_dataset, select

    available = arrow_dataset(path).schema.names
    if "token_ids" not in available:
        raise UsageError(f"--add-tunes {path} has no token_ids column: give a dataset of tunes (a generate run)")
    if only_valid and "valid" not in available:
        raise UsageError(f"--add-tunes {path} has no valid column for --only-valid: run `folkrnn validate {path}` "
                         "first")
    table = select(path, columns=["token_ids"] + (["valid"] if only_valid else []))
    table = table.append_column("split", pa.array(["train"] * table.num_rows, pa.string()))
    added = tunes_from_table(table, f"{path} (--add-tunes)", only_valid)
    return TuneSet(train=data.train + added.train, valid=data.valid, source=f"{data.source} + {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", default="out/ingest",
                        help="the ingest's output folder (tunes/*.parquet), a Parquet file, or a folk-rnn text "
                             "file: per tune an M: line, a K: line and a token line, tunes separated by a blank "
                             "line (default: out/ingest)")
    parser.add_argument("--out", default="out/train",
                        help="run folder: checkpoints/last.pt and best.pt, metrics.csv, loss.png (default: out/train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT exactly where OUT/checkpoints/last.pt left it")
    parser.add_argument("--resume-from", default=None, metavar="CKPT",
                        help="continue from another checkpoint of `folkrnn train`, writing to OUT")
    parser.add_argument("--init", default=None, metavar="CKPT",
                        help="start a new run from the weights of any checkpoint (fine-tuning; a sampling-only "
                             "export such as model/demo.pt too): its layers and units, a fresh optimizer and "
                             "learning-rate schedule; --dropout and the training options may differ")
    model = parser.add_argument_group("model (defaults: folk-rnn v2)")
    model.add_argument("--layers", type=int, default=None, help="LSTM layers (default 3)")
    model.add_argument("--units", type=int, default=None, help="units per LSTM layer (default 512)")
    model.add_argument("--dropout", type=float, default=None, help="dropout after each LSTM layer (default 0.5)")
    opt = parser.add_argument_group("training (defaults: folk-rnn v2's config5)")
    opt.add_argument("--max-epochs", type=int, default=None, help="epochs (default 100)")
    opt.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all (for quick runs)")
    opt.add_argument("--batch-size", type=int, default=None, help="tunes per batch (default 64)")
    opt.add_argument("--lr", type=float, default=None, help="RMSprop learning rate (default 0.003)")
    opt.add_argument("--clip-mode", choices=["norm", "elementwise"], default=None,
                     help="norm (default): rescale the whole gradient to L2 norm <= --clip, fused kernels. "
                          "elementwise: the original's recipe, slower: clip every gate's gradient to "
                          "[-clip, clip] at every step, loss summed per tune, Lasagne's RMSprop")
    opt.add_argument("--clip", type=float, default=None, help="clipping threshold (default 5)")
    opt.add_argument("--seed", type=int, default=None, help="seed of initialisation, dropout and data order (default 42)")
    opt.add_argument("--checkpoint-every", type=int, default=None,
                     help="steps between checkpoints, besides each epoch end (default 200; 0: epoch ends only)")
    opt.add_argument("--valid-fraction", type=float, default=None,
                     help="share of tunes held out, for folk-rnn text input only (Parquet has a split column; "
                          "default 0.05)")
    opt.add_argument("--device", default=None, help="auto (CUDA when present, default), cpu, cuda, cuda:1 ...")
    opt.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default=None,
                     help="fp32 (default); tf32 matmuls on CUDA; bf16 autocast")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: one per usable core, less those other processes "
                             "keep busy, at least 1: the cores are watched for 0.3 s at the start; torch's threads "
                             "stall waiting for each other whenever one waits for a core)")
    parser.add_argument("--only-valid", action="store_true",
                        help="train only on tunes the validator passed (ingest Parquet's valid column)")
    parser.add_argument("--where", default=None,
                        help="train only on the ingest's tunes matching this SQL condition on its columns, as "
                             "in folkrnn query, e.g. \"collection IN ('oneills1850','ryansMammoth')\" "
                             "(recorded in the checkpoints; a resume keeps it)")
    parser.add_argument("--add-tunes", action="append", default=None, metavar="DATASET",
                        help="also train on every tune of this Parquet dataset (repeatable), e.g. a `folkrnn "
                             "generate --well-formed` run: all go to the training split, none to valid; with "
                             "--only-valid, `folkrnn validate` it first (recorded in the checkpoints)")
    parser.add_argument("--name", default=None,
                        help="the checkpoints' human name, shown in generate's manifest and on title pages "
                             "(default: 'folk-rnn v2-style LSTM LAYERSxUNITS')")
    parser.add_argument("--export", default=None, metavar="FILE.pt",
                        help="at the end, also write the run's best checkpoint (by valid loss; the last one "
                             "without valid tunes) as a sampling-only file: weights, config and meta, e.g. "
                             "model/demo.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _given(args: argparse.Namespace, name: str) -> bool:
    return getattr(args, name, None) is not None


def check_arguments(args: argparse.Namespace) -> None:
    from folkrnn.model.network import MAX_LAYERS, MAX_UNITS

    for name in ("layers", "units", "batch_size", "max_epochs", "threads"):
        if _given(args, name) and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name, most in (("layers", MAX_LAYERS), ("units", MAX_UNITS)):
        if _given(args, name) and getattr(args, name) > most:
            raise UsageError(f"--{name} must be at most {most}, got {getattr(args, name)}")
    for name in ("max_steps", "checkpoint_every"):
        if _given(args, name) and getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if _given(args, "dropout") and not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {args.dropout}")
    if _given(args, "valid_fraction") and not 0 <= args.valid_fraction < 1:
        raise UsageError(f"--valid-fraction must be in [0, 1), got {args.valid_fraction}")
    if _given(args, "lr") and args.lr <= 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if _given(args, "where") and not args.where.strip():
        raise UsageError("--where is empty: give a condition such as \"collection IN ('oneills1850','ryansMammoth')\"")
    if _given(args, "name") and not args.name.strip():
        raise UsageError("--name is empty: give a short name such as \"folk-rnn 3x256, dance tunes\"")
    if _given(args, "export") and (os.path.isdir(args.export) or not args.export.endswith(".pt")):
        raise UsageError(f"--export {args.export}: give the file to write, e.g. model/mine.pt")


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    from folkrnn.model.checkpoint import check_folder, model_config_of, read_payload
    from folkrnn.model.network import ModelConfig
    from folkrnn.model.train import RESUME_MAY_CHANGE, TrainConfig, checkpoint_paths, restoring, train

    check_folder(args.out, "the training run")

    last_path, _ = checkpoint_paths(args.out)
    resume = None
    resume_from = getattr(args, "resume_from", None)
    if getattr(args, "resume", False) or resume_from:
        resume = resume_from or last_path
        if not os.path.exists(resume):
            raise UsageError(f"nothing to resume: no checkpoint at {resume}")
    elif os.path.exists(last_path):
        raise UsageError(f"{args.out} already holds a training run ({last_path}): add --resume to continue it, "
                         "or choose another --out")

    init = getattr(args, "init", None)
    if init is not None and resume is not None:
        raise UsageError("--init starts a new run and --resume continues one: give one of them")
    cfg, model_config = TrainConfig(), ModelConfig()
    if init is not None:
        model_config = model_config_of(read_payload(init), init)  # config, shapes and NaN checked
        for option in ("layers", "units"):
            field = MODEL_OPTIONS[option]
            if _given(args, option) and getattr(args, option) != getattr(model_config, field):
                raise UsageError(f"--{option} {getattr(args, option)} differs from {init} "
                                 f"({getattr(model_config, field)}): --init keeps the checkpoint's sizes")
    if resume is not None:
        payload = read_payload(resume)
        if payload.get("train_state") is None:
            raise UsageError(f"{resume} holds weights but no training state (an imported model?); it can be "
                             "sampled from but not resumed")
        with restoring(resume):
            cfg = TrainConfig.from_dict(payload["train_state"]["train_config"])
        model_config = model_config_of(payload, resume)
        # Repeating the original command with --resume is fine; changing what the checkpoint fixes is not.
        changed = [f"--{option} {getattr(args, option)} (checkpoint: {getattr(model_config, field)})"
                   for option, field in MODEL_OPTIONS.items()
                   if _given(args, option) and getattr(args, option) != getattr(model_config, field)]
        changed += [f"--{name.replace('_', '-')} {_shown(getattr(args, name))} "
                    f"(checkpoint: {_shown(getattr(cfg, name))})"
                    for name in TRAIN_OPTIONS
                    if name not in RESUME_MAY_CHANGE and _given(args, name) and getattr(args, name) != getattr(cfg, name)]
        if changed:
            raise UsageError("cannot change on --resume: " + ", ".join(changed) + "; only "
                             + ", ".join(f"--{n.replace('_', '-')}" for n in RESUME_MAY_CHANGE) + " can")
    for name in TRAIN_OPTIONS:
        if _given(args, name):
            setattr(cfg, name, getattr(args, name))
    for option, field in MODEL_OPTIONS.items():
        if _given(args, option):
            setattr(model_config, field, getattr(args, option))
    model_config.check()  # e.g. --layers 8 --units 4096 is over the parameter limit: say so before loading data

    set_threads(getattr(args, "threads", None), getattr(args, "device", None))
    only_valid = getattr(args, "only_valid", False)
    data = load_training_tunes(args.data, cfg.where, cfg.valid_fraction, only_valid)
    for path in cfg.add_tunes:
        data = with_added_tunes(data, path, only_valid)
    summary = train(data, args.out, model_config, cfg, resume=resume, progress=not getattr(args, "quiet", False),
                    init=init)
    best = summary["best_valid_loss"]
    print(f"train: {summary['step']} steps, {summary['epoch']} epochs, {summary['elapsed_s']:.1f} s of training"
          + (f"; best valid {best:.4f} nats/token" if best is not None else "")
          + f" ({summary['stopped_by'].replace('_', ' ')})")
    print(f"written to {args.out}/: checkpoints/last.pt" + (", checkpoints/best.pt" if summary["best"] else "")
          + ", metrics.csv, loss.png")
    if getattr(args, "export", None):
        from folkrnn.model.checkpoint import export_checkpoint

        export_checkpoint(summary["best"] or summary["last"], args.export)
        print(f"exported {'checkpoints/best.pt' if summary['best'] else 'checkpoints/last.pt'} to {args.export} "
              "(sampling only)")
    return 0


def set_threads(threads: int | None, device: str | None) -> None:
    """--threads, or on the CPU a thread per usable core while those cores are idle, fewer (down to
    1) for the cores other processes keep busy: torch's threads stall whenever one of them waits
    for a core (see model/devices.py ``threads_beside``)."""
    import torch

    from folkrnn.model.devices import default_threads, resolve_device, usable_cpus

    if threads:
        torch.set_num_threads(threads)
        return
    if resolve_device(device or "auto").type != "cpu":
        return
    chosen, others = default_threads()
    torch.set_num_threads(chosen)
    cores = len(usable_cpus())
    if chosen < cores:
        print(f"train: other processes keep {others:.1f} of the {cores} usable cores busy, so torch trains with "
              f"{chosen} thread{'s' if chosen != 1 else ''} (more would stall waiting for each other); --threads N "
              "to choose")  # information, like the start line: stderr is for errors


def _shown(value: object) -> str:
    """A setting's value in a message ("" is no --where: "none")."""
    return repr(value) if isinstance(value, str) and value else "none" if value == "" else str(value)


def load_training_tunes(data: str, where: str, valid_fraction: float, only_valid: bool):
    """The tunes to train on: all of ``data``, or the ingest's tunes matching the SQL condition
    ``where``, selected by the sandboxed DuckDB of ``folkrnn query`` (pipeline/datasets.py) in id
    order."""
    from folkrnn.model.data import ingest_tunes_path, load_tunes, tunes_from_table

    if not where:
        return load_tunes(data, valid_fraction, only_valid=only_valid)
    from folkrnn.pipeline.datasets import connect, relation, select

    path = ingest_tunes_path(data)
    if not os.path.exists(path):
        raise UsageError(f"no such file or folder: {data} (give the ingest's output folder)")
    if not (os.path.isdir(path) or path.endswith(".parquet")):
        raise UsageError(f"--where needs the ingest's Parquet tunes, and {data} is a text file: give the "
                         "ingest's output folder")
    columns = ["token_ids", "split"] + (["valid"] if only_valid else [])
    available = relation(connect(), path).columns
    missing = [c for c in columns if c not in available]
    if missing:
        raise UsageError(f"{data} has no {', '.join(missing)} column: --where selects from the ingest's tunes "
                         "(give the ingest's output folder)")
    table = select(path, where=where, columns=columns)
    if table.num_rows == 0:
        raise UsageError(f"--where {where!r} matches none of the {data} tunes: check it with "
                         f"folkrnn query {path} --where ...")
    return tunes_from_table(table, f"{path} where {where}", only_valid)
