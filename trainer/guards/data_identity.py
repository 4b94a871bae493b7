"""What a run trains and validates on, recorded in every checkpoint and checked where it matters.

A dataset that offers `identity()`, a small dict of plain values, is checked; any other dataset
is not. TextTokens (data/text.py) gives its corpus (sha256 of the text bytes in order, files,
bytes), its tokenizer (type, vocab_size, sha256 of the vocabulary and merges), split,
val_fraction and block_size. Three rules, each an InputError (exit 2) before anything moves:

- At the door: training and validation data read from one corpus (the same sha256) must use
  one split point (val_fraction) and be its two different splits, or validation text would be
  trained on; and training and validation must share one tokenizer, or the model would be
  scored on ids that mean other text.
- On resume: the data's identity must be the checkpoint's (a file added to the corpus, a
  retrained tokenizer, another val_fraction or block_size), unless `resume_data: accept` goes
  on with the new data on purpose, which the log then says.
- tools/generate.py: the tokenizer must be the one the weights were trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from data.loader import dataset_of
from trainer.checkpoint.layout import KEY_ITERATION
from trainer.checkpoint.readers import read_checkpoint, read_whole
from trainer.errors import InputError, first_line

KEY_DATA = "data"  # in a checkpoint: {"train": identity or None, "val": identity or None}
_KEYS = {"train": "data.train", "val": "data.val"}
_FIELDS = ("corpus", "tokenizer", "split", "val_fraction", "block_size")


def identity_of(dataset: Dataset | None) -> dict[str, Any] | None:
    """The dataset's `identity()`, or None for no dataset or one that offers none."""
    identity = getattr(dataset, "identity", None)
    return identity() if callable(identity) else None


class RunData:
    """The identities of a run's training and validation data, checked against each other when built.

    `state()` is what a checkpoint records under "data"; `check_start` compares it with the
    checkpoint a run resumes and returns what the log should say about the data.
    """

    def __init__(self, train_loader: Any, val_loader: Any | None) -> None:
        train = dataset_of(train_loader)
        val = dataset_of(val_loader) if val_loader is not None else None
        self.identities = {"train": identity_of(train), "val": identity_of(val)}
        self.notes = _dataset_notes(train, val)
        self.batches_per_epoch = train_loader.sampler.batches_per_epoch
        check_pair(self.identities["train"], self.identities["val"])

    def state(self) -> dict[str, Any]:
        """{"train": identity or None, "val": identity or None}: what a checkpoint records."""
        return {split: dict(identity) if identity else None for split, identity in self.identities.items()}

    def check_start(
        self, checkpoint: dict[str, Any] | None, path: Path | str | None, policy: Literal["check", "accept"]
    ) -> list[str]:
        """The log notes about the data; InputError when a resumed run's data differ from its
        checkpoint's under resume_data: check. Runs before anything is loaded, locked or written.

        Under accept, a position in the epoch that the new training data no longer have moves
        the checkpoint (as loaded in memory) to the start of the next epoch.
        """
        if checkpoint is None:
            return list(self.notes)
        saved = checkpoint.get(KEY_DATA)
        if saved is None:  # a checkpoint from before Kiln recorded it
            unchecked = f"resume_path {path} records no data identity (saved before Kiln did): the data were not checked"
            return self.notes + ([unchecked] if any(self.identities.values()) else [])
        changes = data_changes(saved, self.state())
        if not changes:
            return list(self.notes)
        iteration = checkpoint[KEY_ITERATION]
        if policy != "accept":
            raise InputError(
                f"resume_path {path}: the data changed since the checkpoint ({'; '.join(changes)}); point data.train and "
                f"data.val back at the data the run was trained on, or set resume_data=accept to go on with the new data "
                f"from iteration {iteration}"
            )
        return self.notes + [_accepted(changes, saved, self.state(), iteration), *self._fit_position(checkpoint)]

    def _fit_position(self, checkpoint: dict[str, Any]) -> list[str]:
        """Move a position past the end of the new data's epoch to the next epoch's start."""
        if checkpoint.get("position", 0) < self.batches_per_epoch:
            return []
        checkpoint["epoch"], checkpoint["position"] = checkpoint["epoch"] + 1, 0
        return [
            f"the new training data have {self.batches_per_epoch} batches an epoch, fewer than the checkpoint's position: "
            f"training goes on at the start of epoch {checkpoint['epoch']}"
        ]


def _dataset_notes(train: Dataset, val: Dataset | None) -> list[str]:
    """Each dataset's `notes` (binary files left out, a smaller vocabulary), prefixed with its key; val's
    notes that repeat train's (one corpus, one tokenizer) are said once."""
    notes, said = [], set()
    for key, dataset in (("data.train", train), ("data.val", val)):
        for note in getattr(dataset, "notes", None) or []:
            if note not in said:
                notes.append(f"{key}: {note}")
                said.add(note)
    return notes


def check_pair(train: dict[str, Any] | None, val: dict[str, Any] | None) -> None:
    """InputError when training and validation data of one corpus overlap or tokenize differently."""
    if train is None or val is None:
        return
    if train["corpus"] == val["corpus"] and "split" not in train:  # a dataset of whole files (ChatJSONL): no splits
        raise InputError(
            f"config keys data.train and data.val read the same files ({describe_corpus(train['corpus'])}), so the model "
            "would be validated on what it trains on; give data.val held-out examples"
        )
    if train["corpus"] == val["corpus"]:
        corpus = f"one corpus ({describe_corpus(train['corpus'])})"
        if train["split"] == val["split"]:
            raise InputError(
                f"config keys data.train and data.val: both are the {train['split']} split of {corpus}, so the model "
                "would be validated on what it trains on; set data.train.split: train and data.val.split: val"
            )
        if train["val_fraction"] != val["val_fraction"]:
            raise InputError(
                f"config keys data.train.val_fraction ({train['val_fraction']:g}) and data.val.val_fraction "
                f"({val['val_fraction']:g}) differ for {corpus}: the training split would hold validation text; "
                "give both the same val_fraction"
            )
    if train["tokenizer"] != val["tokenizer"]:
        how = "the same tokenizer"
        if "bpe" in (train["tokenizer"]["type"], val["tokenizer"]["type"]):
            how += ", root and val_fraction (a BPE is trained on the training split of its own corpus)"
        raise InputError(
            f"config keys data.train and data.val tokenize differently ({describe_tokenizer(train['tokenizer'])} vs "
            f"{describe_tokenizer(val['tokenizer'])}): the model would be validated on ids that mean other text; "
            f"give data.val {how} as data.train"
        )


def data_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'data.train: corpus A -> B, tokenizer X -> Y' for each split whose identity differs (a change
    of data.val that repeats data.train's, one corpus read twice, is not spelled out again)."""
    changes, said = [], None
    for split, key in _KEYS.items():
        before, after = saved.get(split), now.get(split)
        if before == after:
            continue
        if before is None or after is None:
            what = f"{_describe_identity(before)} -> {_describe_identity(after)}"
        else:
            others = sorted((before.keys() | after.keys()) - set(_FIELDS))  # a dataset's own fields (ChatJSONL's loss_on)
            fields = [_field_change(name, before.get(name), after.get(name)) for name in [*_FIELDS, *others]]
            what = ", ".join(field for field in fields if field)
        changes.append(f"{key}: {'the same' if what == said else what}")
        said = what
    return changes


def _field_change(name: str, before: Any, after: Any) -> str:
    """'corpus A -> B' for one field of an identity; '' when it is the same."""
    if before == after:
        return ""
    describe = {"corpus": describe_corpus, "tokenizer": describe_tokenizer}.get(name, str)
    return f"{name} {'none' if before is None else describe(before)} -> {'none' if after is None else describe(after)}"


def _describe_identity(identity: dict[str, Any] | None) -> str:
    """A whole identity in a few words; 'no recorded identity' for None."""
    if identity is None:
        return "no recorded identity"
    return f"corpus {describe_corpus(identity['corpus'])}, tokenizer {describe_tokenizer(identity['tokenizer'])}"


def describe_corpus(corpus: dict[str, Any]) -> str:
    """'3 files, 36,000 bytes, sha256 1a2b3c4d5e6f'."""
    return f"{corpus['files']} file(s), {corpus['bytes']:,} bytes, sha256 {corpus['sha256'][:12]}"


def describe_tokenizer(tokenizer: dict[str, Any]) -> str:
    """'bpe with 400 ids, sha256 1a2b3c4d5e6f'."""
    return f"{tokenizer['type']} with {tokenizer['vocab_size']} ids, sha256 {tokenizer['sha256'][:12]}"


def _accepted(changes: list[str], saved: dict[str, Any], now: dict[str, Any], iteration: int) -> str:
    """The log note of a resume that goes on with changed data (resume_data: accept)."""
    retrained = any((saved.get(split) or {}).get("tokenizer") != (now.get(split) or {}).get("tokenizer") for split in _KEYS)
    warning = "; the tokenizer changed: the token ids the weights learned now stand for other text" if retrained else ""
    return (
        f"resume_data accept: the data changed since the checkpoint, the new data are used from iteration {iteration} "
        f"({'; '.join(changes)}){warning}"
    )


def recorded_data(weights: Any, location: Path | str) -> tuple[dict[str, Any] | None, str | None]:
    """(the data identity that goes with weights read from `location`, a tool's --weights; a note).

    A full checkpoint has its own; a .pth takes the one of the .pt or .dcp Kiln wrote beside it
    (the same tag); weights from elsewhere have none (nothing to check against). The note says
    why a neighbour that cannot be read was not used: it is not the file asked for.
    """
    if isinstance(weights, dict) and KEY_DATA in weights:
        return weights[KEY_DATA], None
    path = Path(str(location))
    if path.suffix != ".pth" or not path.is_file():
        return None, None
    for neighbour in (path.with_suffix(".pt"), path.with_suffix(".dcp")):
        if neighbour.exists():
            # a .dcp: only its small part; a .pt need not be Kiln's (then it records nothing)
            read = read_checkpoint if neighbour.suffix == ".dcp" else read_whole
            try:
                found = read(neighbour, "the checkpoint beside --weights")
            except InputError as error:
                return None, f"the tokenizer was not checked: {first_line(error)}"
            return (found.get(KEY_DATA) if isinstance(found, dict) else None), None
    return None, None


def check_tokenizer(saved: dict[str, Any] | None, dataset: Dataset, weights: Path | str) -> None:
    """InputError when `dataset` (data.train) tokenizes otherwise than the data the weights were
    trained on: the model would read and write ids that stand for other text."""
    before, now = (saved or {}).get("train"), identity_of(dataset)
    if before is None or now is None or before["tokenizer"] == now["tokenizer"]:
        return
    corpus = ""
    if before["corpus"] != now["corpus"]:
        corpus = f"; its corpus changed: {describe_corpus(before['corpus'])} -> {describe_corpus(now['corpus'])}"
    raise InputError(
        f"--weights {weights} was trained with the tokenizer {describe_tokenizer(before['tokenizer'])}, data.train now gives "
        f"{describe_tokenizer(now['tokenizer'])}{corpus}; point data.train at the corpus, tokenizer and val_fraction "
        "the weights were trained with"
    )
