"""The compressors' figure on the LM validation bytes: the honest floor for "it learned something".

Reads exactly the bytes TextTokens scores as validation (the last `val_fraction` of the corpus,
cut at a character boundary, the same function the dataset uses) and prints the bits per byte
of `gzip -9` and `bzip2 -9` (Python's gzip and bz2 at level 9, as the command-line tools
default to) and of `lzma -9`. A GPT's `bpb` on the same split must be below gzip's.

    python benchmarks/lm_baselines.py [--root PATH] [--val-fraction 0.1]
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import platform

from _common import REPO  # noqa: F401  (importing it puts the repo root on sys.path)

from data.text import corpus_files, split_point


def validation_bytes(root: str | None, val_fraction: float) -> bytes:
    """The validation text of TextTokens(root, val_fraction): what its bpb is measured on."""
    data = b"".join(path.read_bytes() for path in corpus_files(root))
    return data[split_point(data, val_fraction) :]


def main() -> None:
    """Print each compressor's bits per byte on the validation bytes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="the corpus (default: the running Python's Lib/*.py)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args()
    val = validation_bytes(args.root, args.val_fraction)
    print(f"validation bytes: {len(val):,} (Python {platform.python_version()} standard library unless --root)")
    for name, compress in (
        ("gzip -9", lambda b: gzip.compress(b, 9)),
        ("bzip2 -9", lambda b: bz2.compress(b, 9)),
        ("xz -9", lambda b: lzma.compress(b, preset=9)),
    ):
        print(f"{name:9s} {8 * len(compress(val)) / len(val):.3f} bits per byte")


if __name__ == "__main__":
    main()
