"""Copy checkpoints between a local folder and an object store, and list what a store holds.

    python tools/checkpoints.py push SRC DST [--name NAME] [--force]   a local folder (weights/, checkpoints/) -> a URL
    python tools/checkpoints.py pull SRC DST [--name NAME] [--force]   a URL -> a local folder
    python tools/checkpoints.py ls URL [--name NAME]                   each checkpoint: iteration, size, complete or not

The files are Kiln's: `<name>_iter_<N>.*`, `<name>_best.*` and sharded `<name>_*.dcp/` folders
(every experiment's, or NAME's only), at the top of SRC; archived subfolders stay where they are.

Only what is missing or changed is copied. A file is unchanged when it has the same size and
the same content: its sha256, which every Kiln upload to S3 stores as object metadata (`sha256`),
or, for an object uploaded by another tool in one part, its ETag (the MD5 of its content). A
remote object with neither is read and hashed. Local files are hashed as they are.

What DST holds is never lost (Kiln's rule, as a fresh run archives an earlier run's files): a DST
file whose content differs from SRC's is first moved into `<name>_archived_<YYYYmmdd_HHMMSS>/`
beside it (a `.dcp` folder whole, since its files belong together), and the line before the
summary says where; `--force` replaces such files without keeping them.

Every copy is atomic on the receiving side: a local file is written to a temporary name and
renamed; an upload becomes visible only once complete, and within each checkpoint the `.pt`
(the marker `resume_path: auto` counts) goes last, after the `.pth`; in a `.dcp` folder the
`.metadata` goes last. An interrupted push or pull leaves only whole files; run it again to copy
the rest. A progress bar (bytes) goes to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path
from typing import Any

# Run as `python tools/checkpoints.py` from the repo root: the script's own folder is on
# sys.path, the repo root (where trainer/ and utils/ live) is not.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fsspec.callbacks import Callback  # noqa: E402

from utils.cli import OneLineErrorParser, run_tool  # noqa: E402  (needs the repo root on sys.path)

CHECKPOINT = re.compile(r"^(?P<name>.+)_(?P<tag>iter_(?P<iteration>\d+)|best)(?P<suffix>\.[A-Za-z0-9]+)$")
# As trainer/checkpoint/dcp.py names them (not imported: that would import torch for two strings).
METADATA_FILE = ".metadata"
STATE_FILE = "kiln_state.pt"
DCP = ".dcp"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """push SRC DST | pull SRC DST | ls URL, each with --name."""
    parser = OneLineErrorParser(
        prog="tools/checkpoints.py",
        description="Copy an experiment's checkpoints between a local folder and an object store, or list them.",
        epilog="example: python tools/checkpoints.py push weights s3://my-bucket/kiln/weights --name digits_cnn",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for command, text in (("push", "a local folder to a URL"), ("pull", "a URL to a local folder")):
        sub = commands.add_parser(command, help=f"copy what is missing or changed from {text}")
        sub.add_argument("src", metavar="SRC")
        sub.add_argument("dst", metavar="DST")
        sub.add_argument("--name", help="only this experiment's files (default: every experiment's)")
        sub.add_argument(
            "--force",
            action="store_true",
            help="replace DST files whose content differs without keeping them (default: move them into "
            "<name>_archived_<stamp>/ first)",
        )
    listing = commands.add_parser("ls", help="list the checkpoints under a URL or in a folder")
    listing.add_argument("url", metavar="URL")
    listing.add_argument("--name", help="only this experiment's checkpoints")
    return parser.parse_args(argv)


class Checkpoint:
    """One checkpoint (`<name>_<tag>`) and its files, named relative to the store's root."""

    def __init__(self, name: str, tag: str) -> None:
        self.name, self.tag = name, tag
        self.files: dict[str, int] = {}  # relative name -> size in bytes

    @property
    def stem(self) -> str:
        """`<name>_<tag>`."""
        return f"{self.name}_{self.tag}"

    @property
    def order(self) -> tuple:
        """Experiments by name, iterations ascending, best last."""
        return self.name, self.tag == "best", int(self.tag[5:]) if self.tag != "best" else 0

    def has(self, suffix: str) -> bool:
        """Whether `<stem><suffix>` is among the files."""
        return f"{self.stem}{suffix}" in self.files

    def complete(self) -> str:
        """'yes', or 'no: why'. A pair is complete with both its .pt and .pth; a .dcp with its .metadata."""
        if any(rel.startswith(f"{self.stem}{DCP}/") for rel in self.files):
            if self.has(f"{DCP}/{METADATA_FILE}") and self.has(f"{DCP}/{STATE_FILE}"):
                return "yes"
            return "no: .dcp without .metadata (a save that did not finish; resume_path auto skips it)"
        if self.has(".pt") and self.has(".pth"):
            return "yes"
        if self.has(".pth"):
            return "no: .pth without its .pt (an interrupted save or upload; resume_path auto skips it)"
        if self.has(".pt"):
            return "no: .pt without its .pth (resumable; tools/export.py writes the .pth from it)"
        return "no: neither .pt nor .pth"


def find_checkpoints(store: Any, name: str | None) -> list[Checkpoint]:
    """The checkpoints at the top of `store` (NAME's only, when given), in copy order."""
    found: dict[str, Checkpoint] = {}
    for entry in store.entries():
        match = CHECKPOINT.match(entry.name)
        if not match or (name and match["name"] != name) or (entry.is_dir and match["suffix"] != DCP):
            continue
        checkpoint = found.setdefault(f"{match['name']}_{match['tag']}", Checkpoint(match["name"], match["tag"]))
        for file in store.walk(entry.name) if entry.is_dir else [entry]:
            checkpoint.files[file.name] = file.size
    return sorted(found.values(), key=lambda checkpoint: checkpoint.order)


def copy_order(rel: str) -> tuple[int, str]:
    """Markers last: a .dcp's .metadata after its kiln_state.pt after its shards; a .pt after the .pth beside it."""
    base = rel.rsplit("/", 1)[-1]
    if base == METADATA_FILE:
        return 3, rel
    if base == STATE_FILE:
        return 2, rel
    return (1 if rel.endswith(".pt") else 0), rel


def same_content(src: Any, dst: Any, rel: str) -> bool:
    """Whether `rel` holds the same bytes on both sides (the sizes are equal): a digest one side
    stores, checked against the other's; local files are hashed, and a remote object that stores
    no digest is read and hashed (a file that differs is moved aside, so guessing is not allowed)."""
    for known_side, other in ((dst, src), (src, dst)):
        known = known_side.stored_digest(rel)
        if known is not None:
            kind, value = known
            return content_digest(other, rel, kind) == value
    return content_digest(src, rel, "sha256") == content_digest(dst, rel, "sha256")


def content_digest(side: Any, rel: str, kind: str) -> str:
    """The `kind` digest (sha256, md5) of `rel` on `side`: stored or computed by the storage, else
    (a remote object without one) of a temporary download, through the storage's bounded `get`."""
    import tempfile

    from trainer.checkpoint.storage import file_digest

    known = side.digest(rel, kind)
    if known is not None:
        return known
    with tempfile.TemporaryDirectory(prefix="kiln-compare-") as tmp:
        local = Path(tmp) / "object"
        side.get(rel, local)
        return file_digest(local, kind)


def plan(src: Any, dst: Any, name: str | None) -> tuple[list[tuple[str, int, str]], int]:
    """([(relative name, size, why it is copied)] in copy order, the number of unchanged files)."""
    existing = {rel: size for checkpoint in find_checkpoints(dst, name) for rel, size in checkpoint.files.items()}
    copies, unchanged = [], 0
    for checkpoint in find_checkpoints(src, name):
        for rel in sorted(checkpoint.files, key=copy_order):
            size = checkpoint.files[rel]
            if rel not in existing:
                copies.append((rel, size, "missing"))
            elif existing[rel] != size:
                copies.append((rel, size, "size differs"))
            elif not same_content(src, dst, rel):
                copies.append((rel, size, "content differs"))
            else:
                unchanged += 1
    return copies, unchanged


def open_side(location: str, what: str, *, local: bool, write: bool) -> Any:
    """The storage of SRC or DST; a URL is checked at once (bucket, credentials, endpoint)."""
    from trainer.checkpoint.storage import check_store, is_url, open_storage
    from trainer.errors import InputError

    if is_url(location):
        if local:
            raise InputError(f"{what} {location} is a URL, but it must be a local folder here; see tools/checkpoints.py --help")
        check_store(location, what, write=write)
    elif not write and not Path(location).is_dir():
        raise InputError(f"{what} {location} is not a folder; check the path")
    return open_storage(location, what)


def transfer(command: str, source: str, target: str, name: str | None, force: bool = False) -> tuple[int, int, int]:
    """Copy what is missing or changed from `source` to `target`, the DST files it replaces moved
    aside first unless `force`; return (copied, bytes, unchanged)."""
    from tqdm import tqdm

    from trainer.errors import InputError

    src = open_side(source, "SRC", local=command == "push", write=False)
    dst = open_side(target, "DST", local=command == "pull", write=True)
    copies, unchanged = plan(src, dst, name)
    if not copies and not unchanged:
        of = f" of {name}" if name else ""
        raise InputError(
            f"SRC {source} holds no checkpoint files{of} (<name>_iter_<N>.*, <name>_best.*); check the path and --name"
        )
    kept = [] if force else keep_replaced(dst, copies)
    if kept:  # what was moved aside is missing at DST now: plan again, keeping why each file goes
        why = {rel: reason for rel, _, reason in copies}
        copies, unchanged = plan(src, dst, name)
        copies = [(rel, size, why.get(rel, "beside a changed file of its .dcp")) for rel, size, _ in copies]
    total = sum(size for _, size, _ in copies)
    with tqdm(total=total, unit="B", unit_scale=True, desc=command, file=sys.stderr, disable=None, leave=False) as bar:
        for rel, size, why in copies:
            try:
                _copy(src, dst, rel, Progress(bar))
            except OSError as error:
                raise OSError("; ".join([str(error), *kept])) from error
            bar.write(f"copied {rel} ({size / 1e6:.2f} MB, {why})", file=sys.stdout)
    for line in kept:
        print(line)
    return len(copies), total, unchanged


def keep_replaced(dst: Any, copies: list[tuple[str, int, str]]) -> list[str]:
    """Move every DST file a copy replaces (its content differs) into `<name>_archived_<stamp>/`
    beside it, as a fresh run archives an earlier run's files; a .dcp folder goes whole (its files
    belong together). Returns one line per experiment saying what went where."""
    stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
    replaced: dict[str, list[str]] = {}
    for rel, _, why in copies:
        entry = rel.split("/", 1)[0]  # a file, or the .dcp folder of a file inside one
        entries = replaced.setdefault(CHECKPOINT.match(entry)["name"], [])
        if why != "missing" and entry not in entries:
            entries.append(entry)
    lines = []
    for experiment, entries in replaced.items():
        if entries:
            entries.sort(key=lambda entry: not entry.endswith(".pt"))  # the markers first, as a fresh run moves them
            folder = dst.archive(entries, f"{experiment}_archived_{stamp}")
            lines.append(f"moved the replaced {', '.join(entries)} aside to {folder} (--force replaces without keeping)")
    return lines


def _copy(src: Any, dst: Any, rel: str, progress: Any) -> None:
    """One file, atomically on the receiving side; an OSError names both ends."""
    try:
        if dst.remote:
            dst.put(src.location(rel), rel, progress)
        else:
            src.get(rel, dst.location(rel), progress)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(
            f"could not copy {src.location(rel)} to {dst.location(rel)} ({reason}); the files copied before it are "
            "complete: run the command again to copy the rest"
        ) from error


class Progress(Callback):
    """An fsspec callback that moves a shared tqdm bar by the bytes each transfer reports."""

    def __init__(self, bar: Any) -> None:
        super().__init__()
        self.bar, self.shown = bar, 0

    def call(self, *args: Any, **kwargs: Any) -> None:
        """Advance the bar by what was moved since the last report."""
        self.bar.update(self.value - self.shown)
        self.shown = self.value


def listing(location: str, name: str | None) -> str:
    """The `ls` table: checkpoint, iteration, size, files, complete."""
    store = open_side(location, "URL", local=False, write=False)
    checkpoints = find_checkpoints(store, name)
    rows = [("checkpoint", "iteration", "size", "files", "complete")]
    for checkpoint in checkpoints:
        files = " ".join(sorted({_suffix(checkpoint.stem, rel) for rel in checkpoint.files}))
        iteration = checkpoint.tag[5:] if checkpoint.tag != "best" else "best"
        size = f"{sum(checkpoint.files.values()) / 1e6:.2f} MB"
        rows.append((checkpoint.stem, iteration, size, files, checkpoint.complete()))
    complete = sum(checkpoint.complete() == "yes" for checkpoint in checkpoints)
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]) for row in rows]
    return "\n".join([*lines, f"{len(checkpoints)} checkpoints in {store.root}, {complete} complete"])


def _suffix(stem: str, rel: str) -> str:
    """`.pt`, `.pth`, `.dcp` ... of a checkpoint's file."""
    rest = rel[len(stem) :]
    return rest.split("/", 1)[0]


def main(argv: list[str] | None = None) -> int:
    """Parse, run the command, report; exit 2 with one line on a bad input, 1 on a failed copy."""
    args = parse_args(argv)
    from trainer.errors import REPORTED_ERRORS, report_error

    try:
        if args.command == "ls":
            print(listing(args.url, args.name))
            return 0
        copied, size, unchanged = transfer(args.command, args.src, args.dst, args.name, args.force)
    except REPORTED_ERRORS as error:
        return report_error(error)
    except OSError as error:  # the network or a disk failed mid-copy: what was copied is whole
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.command}: {copied} copied ({size / 1e6:.2f} MB), {unchanged} unchanged, {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    run_tool(main)  # exits 141, without a traceback, when the reader of the output went away
