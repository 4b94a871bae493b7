"""wandb: the run in Weights & Biases, online or offline (a local run directory `wandb sync` uploads later).

Options: `project`, `entity`, `mode` (online | offline | disabled; default: WANDB_MODE, else
online), `run_name` (default: `name`), `tags` (a list), `group`, `notes`. The run directory is
under WANDB_DIR when it is set, else under the log directory (`experiments/<name>/wandb/`).
W&B's console capture is off unless WANDB_CONSOLE is set: train.log already has every line.

Recorded: config, the resolved config flattened with dots (the same keys as MLflow's params,
with their YAML types); history, every scalar under its TensorBoard name at step = the global
iteration; summary `best/<metric>` and `best/iteration`; weight files as versions of the model
artifact `<name>-<W&B run id>`, aliased best or latest.

Resume: the checkpoint holds the W&B run id, and the run continues (resume="allow"). W&B cannot
delete points and drops a step below the run's current one, so the tracker skips the steps the
run already holds: those before the resumed run's starting step (online), and up to the last
step this tracker sent, which it records in `<log dir>/wandb_run.json` after each send (offline,
where each process writes a run directory of its own and `wandb sync` joins them in order).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from trainer.registry import TRACKERS
from trainer.tracking.trackers.base import Artifact, RunInfo, ScalarRow, Tracker, check_text, require
from utils.io import atomic_write_text

STATE_FILE = "wandb_run.json"  # {"run_id": ..., "last_step": N}: what this run sent, for an offline resume
MODES = ("online", "offline", "disabled")


@TRACKERS.register(name="wandb")
class WandbTracker(Tracker):
    """One W&B run per Kiln run, continued across resumes."""

    name = "wandb"

    def __init__(
        self,
        *,
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        run_name: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        notes: str | None = None,
    ) -> None:
        for key, value in (("project", project), ("entity", entity), ("run_name", run_name), ("group", group), ("notes", notes)):
            check_text(key, value)
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if tags is not None and (not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags)):
            raise TypeError(f"tags must be a list of strings, got {tags!r}")
        self._wandb = require("wandb")
        self._init = {"project": project, "entity": entity, "mode": mode, "name": run_name, "group": group, "notes": notes}
        self._init["tags"] = tags
        self.run_id: str | None = None
        self._run: Any = None
        self._held = -1  # the newest step the run holds: nothing at or before it is sent again
        self._state_file = Path(STATE_FILE)
        self._artifact = "model"
        self._best_logged: int | None = None  # the iteration of the best weights the run holds (resume's catch-up)

    def start(self, run: RunInfo) -> None:
        """wandb.init with the checkpoint's run id (a new one on a fresh run), resume allowed."""
        wandb = self._wandb
        self.run_id = run.saved.get("run_id") or secrets.token_hex(6)  # known at once: the next checkpoint has it
        self._best_logged = run.saved.get("best_artifact")
        self._state_file = run.log_dir / STATE_FILE
        self._artifact = f"{run.name}-{self.run_id}"  # never the run name: W&B allows only [A-Za-z0-9_.-] here
        settings = {} if "WANDB_CONSOLE" in os.environ else {"console": "off"}
        options = {**self._init, "name": self._init["name"] or run.name}
        self._run = wandb.init(
            **options,
            id=self.run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(run.log_dir),  # given each time: wandb reads its env only once
            settings=wandb.Settings(**settings),
        )
        starting = self._run.starting_step if self._run.resumed else 0
        self._held = max(self._sent_before(), starting - 1)
        if self._held >= 0:
            run.note(f"continuing run {self.run_id}; it holds steps up to iteration {self._held}, not sent again")

    def _sent_before(self) -> int:
        """The last step an earlier process of this run sent, from the log directory; -1 if none."""
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return -1
        return int(state.get("last_step", -1)) if state.get("run_id") == self.run_id else -1

    def log_params(self, params: dict[str, Any]) -> None:
        """The flattened config; a resumed run takes the current values."""
        self._run.config.update(params, allow_val_change=True)

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        """Every scalar at its iteration, skipping the steps the run already holds."""
        sent = [row for row in rows if row.step > self._held]
        for row in sent:
            self._run.log(row.values, step=row.step)  # W&B joins the calls of one step into one history row
        if sent:
            state = {"run_id": self.run_id, "last_step": sent[-1].step}
            atomic_write_text(self._state_file, json.dumps(state) + "\n")

    def log_summary(self, summary: dict[str, float], step: int) -> None:
        """best/<metric> and best/iteration in the run's summary."""
        self._run.summary.update(summary)

    def log_artifact(self, artifact: Artifact) -> None:
        """A new version of the run's model artifact, aliased best or latest."""
        version = self._wandb.Artifact(
            self._artifact, type="model", metadata={"iteration": artifact.iteration, "file": artifact.source.name}
        )
        version.add_file(str(artifact.path), name=artifact.path.name)  # copied into W&B's staging area now
        self._run.log_artifact(version, aliases=[artifact.tag])
        if artifact.tag == "best":
            self._best_logged = artifact.iteration

    def catch_up(self, summary: dict[str, float], step: int, artifact: Artifact | None) -> None:
        """The summary as the checkpoint has it, and the best weights unless the run logged those of that iteration."""
        self.log_summary(summary, step)
        if artifact is not None and artifact.iteration != self._best_logged:
            self.log_artifact(artifact)

    def state(self) -> dict:
        """{"run_id": ..., "best_artifact": N}: the id is known from the start, N once best weights were logged."""
        if not self.run_id:
            return {}
        return {"run_id": self.run_id, **({"best_artifact": self._best_logged} if self._best_logged is not None else {})}

    def close(self, finished: bool) -> None:
        """wandb's finish: exit code 0 when training reached its end, else 1."""
        if self._run is not None:
            self._run.finish(exit_code=0 if finished else 1)
