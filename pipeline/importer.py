"""``folkrnn import-folkrnn``: the original folk-rnn v2 parameter pickle -> a folkrnn checkpoint."""

from __future__ import annotations

import argparse

HELP = "Convert your copy of the original folk-rnn v2 parameters (a Python 2 pickle) into a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.pkl",
                        help="the original metadata pickle (a dict with param_values, token2idx, configuration); "
                             "it is read with a restricted unpickler that refuses anything but numpy arrays")
    parser.add_argument("--out", default="out/folkrnn-v2.pt", metavar="CKPT",
                        help="checkpoint to write (default: out/folkrnn-v2.pt)")


def run(args: argparse.Namespace) -> int:
    from folkrnn.model.checkpoint import checkpoint_id
    from folkrnn.model.importer import import_folkrnn

    info = import_folkrnn(args.file, args.out)
    order = "same token order" if info["token_order_identical"] else "token order mapped onto ours"
    print(f"import-folkrnn: {info['configuration'] or 'folk-rnn'} model, {info['n_layers']} x {info['n_units']} LSTM, "
          f"{info['parameters']:,} parameters; {order}")
    print(f"written {info['out']} (checkpoint id {checkpoint_id(info['out'])})")
    return 0
