"""SLURM's environment as torchrun's: the ranks of `srun` tasks, and where they meet.

Under `srun -n N python train.py` (or `srun` inside an `sbatch` script) every task is one rank.
SLURM tells each task who it is; `adopt_slurm_environment` writes the same facts into the
variables torchrun would have set, so that the rest of Kiln (the process group's `env://`
rendezvous, the shared-directory check, the exit path of a worker) treats both launchers alike:

| torchrun's variable | from SLURM |
| --- | --- |
| RANK | SLURM_PROCID |
| WORLD_SIZE | SLURM_NTASKS (inside a step, srun sets it to the step's task count) |
| LOCAL_RANK | SLURM_LOCALID |
| LOCAL_WORLD_SIZE | this node's entry of SLURM_STEP_TASKS_PER_NODE (`2(x3),1` -> 2, 2, 2, 1) |
| MASTER_ADDR | kept when set; else the first host of SLURM_STEP_NODELIST (else SLURM_JOB_NODELIST): rank 0 runs there |
| MASTER_PORT | kept when set; else 10000 + SLURM_JOB_ID % 20000 |

Precedence: torchrun's variables win. A task that already has WORLD_SIZE or RANK (torchrun
started it, as in `srun torchrun ...` with one torchrun per node, or the user exported them)
is left alone, whatever SLURM says. Only a process inside an srun *step* (SLURM_STEP_ID set)
is a SLURM rank: a batch script that runs `python train.py` itself (the batch step, which has
SLURM_PROCID=0 and the allocation's SLURM_NTASKS) is a single-process run, as is a step of one task.

The host list is expanded by `scontrol show hostnames` (SLURM's own parser); where scontrol is
missing or fails, `expand_nodelist` reads the common forms (`node[01-03,05]`, `a[1-2]-ib`, lists
of those). The port is a function of the job id, so that every task of the job agrees on it
without talking, a requeued job (same id) reuses it, and two jobs sharing a node rarely collide;
10000-29999 stays below Linux's ephemeral range, where outgoing connections take their ports.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from trainer.errors import InputError

# What torchrun (or a user who launches the ranks by hand) sets in every worker: present -> not ours to set.
TORCHRUN_VARIABLES = ("WORLD_SIZE", "RANK")
PORT_BASE, PORT_SPAN = 10000, 20000
# `scontrol show hostnames` needs no controller; a hung one must not stall the start of every rank.
SCONTROL_TIMEOUT_S = 30


@dataclass(frozen=True)
class SlurmPlacement:
    """One srun task's place in the job, in torchrun's terms."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int

    def as_torchrun_environment(self) -> dict[str, str]:
        """The variables torchrun would have set for this task."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def in_srun_step(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of an srun step (not the batch script itself, not outside SLURM)."""
    return "SLURM_STEP_ID" in env and "SLURM_PROCID" in env


def placement_from(env: Mapping[str, str]) -> SlurmPlacement | None:
    """This task's placement from SLURM's variables; None when torchrun's are present (they win),
    outside an srun step, or for a step of one task (a single-process run). InputError on a
    variable that is not what SLURM writes (one line, exit 2)."""
    if any(name in env for name in TORCHRUN_VARIABLES) or not in_srun_step(env):
        return None
    world_size = _integer(env, "SLURM_NTASKS", minimum=1)
    if world_size == 1:
        return None
    rank = _integer(env, "SLURM_PROCID", minimum=0)
    if rank >= world_size:
        raise InputError(f"SLURM_PROCID={rank} is not below SLURM_NTASKS={world_size}; unset one of them or launch with srun")
    return SlurmPlacement(
        rank=rank,
        local_rank=_integer(env, "SLURM_LOCALID", minimum=0, default=0),
        world_size=world_size,
        local_world_size=local_world_size(env, world_size),
        master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""),
        master_port=master_port(env),
    )


def adopt_slurm_environment(env: MutableMapping[str, str] | None = None) -> SlurmPlacement | None:
    """Under an srun step of several tasks without torchrun: write torchrun's variables into
    `env` (os.environ by default) and return the placement; otherwise change nothing, return None."""
    env = os.environ if env is None else env
    placement = placement_from(env)
    if placement is not None:
        env.update(placement.as_torchrun_environment())
    return placement


def master_port(env: Mapping[str, str]) -> int:
    """MASTER_PORT when set; else one derived from the job id (every task computes the same)."""
    if env.get("MASTER_PORT"):
        port = _integer(env, "MASTER_PORT", minimum=1)
        if port > 65535:
            raise InputError(f"MASTER_PORT={port} is not a TCP port (1-65535); set it to a free port or unset it")
        return port
    job = _integer(env, "SLURM_JOB_ID", minimum=0)
    return PORT_BASE + job % PORT_SPAN


def local_world_size(env: Mapping[str, str], world_size: int) -> int:
    """The number of this step's tasks on this node (SLURM_STEP_TASKS_PER_NODE at SLURM_NODEID);
    the whole world when SLURM does not say (one node)."""
    counts = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "")
    node = _integer(env, "SLURM_NODEID", minimum=0, default=0)
    return counts[node] if node < len(counts) else world_size


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM's compressed per-node task counts, one per node: '2(x3),1' -> [2, 2, 2, 1]; '' -> []."""
    counts = []
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            return []  # a form this reader does not know: let the caller assume one node
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (where rank 0 runs): `scontrol show hostnames`, else
    `expand_nodelist`. InputError for an empty list."""
    if not nodelist.strip():
        raise InputError("SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are empty; set MASTER_ADDR or launch with srun")
    hosts = _scontrol_hostnames(nodelist) or expand_nodelist(nodelist)
    return hosts[0]


def _scontrol_hostnames(nodelist: str) -> list[str]:
    """SLURM's own expansion of `nodelist`, or [] where scontrol is missing or refuses it."""
    try:
        result = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):  # not installed on this node (a container), or hung
        return []
    return result.stdout.split() if result.returncode == 0 else []


def expand_nodelist(nodelist: str) -> list[str]:
    """Every host of a SLURM node list, in order: 'node[01-03,05],gpu7' -> node01 node02 node03
    node05 gpu7 (zero padding kept; several bracket groups in one name multiply out)."""
    hosts: list[str] = []
    for expression in _split_top_level(nodelist.strip()):
        hosts += _expand_host_expression(expression)
    return hosts


def _split_top_level(text: str) -> list[str]:
    """Split at the commas that are not inside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise InputError(f"SLURM node list {text!r} has unbalanced brackets; set MASTER_ADDR to rank 0's host")
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise InputError(f"SLURM node list {text!r} has unbalanced brackets; set MASTER_ADDR to rank 0's host")
    parts.append(text[start:])
    return [part for part in parts if part]


def _expand_host_expression(expression: str) -> list[str]:
    """'n[1-2]x[a,b]'-style: the literal pieces and the bracket groups' alternatives, multiplied out."""
    pieces = re.split(r"\[([^\]]*)\]", expression)  # literal, group, literal, group, ..., literal
    choices = [[piece] if index % 2 == 0 else _expand_range_group(piece, expression) for index, piece in enumerate(pieces)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def _expand_range_group(group: str, expression: str) -> list[str]:
    """'01-03,05' -> ['01', '02', '03', '05'] (the width of the lower bound is kept)."""
    values = []
    for item in group.split(","):
        low, _, high = item.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise InputError(f"SLURM node list {expression!r}: cannot read the range {item!r}; set MASTER_ADDR to rank 0's host")
        width = len(low)
        values += [str(number).zfill(width) for number in range(int(low), int(high or low) + 1)]
    return values


def _integer(env: Mapping[str, str], name: str, minimum: int, default: int | None = None) -> int:
    """An integer variable of the environment, checked; InputError naming it when it is not one."""
    text = env.get(name)
    if text is None and default is not None:
        return default
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise InputError(
            f"{name}={text!r} is not an integer >= {minimum}; SLURM sets it in every srun task: launch with srun or unset it"
        )
    return value


def restart_count(env: Mapping[str, str] | None = None) -> int | None:
    """SLURM_RESTART_COUNT (how many times SLURM requeued this job), or None outside a requeued job."""
    text = (os.environ if env is None else env).get("SLURM_RESTART_COUNT", "").strip()
    return int(text) if text.isdigit() else None


def job_to_requeue(env: Mapping[str, str] | None = None) -> str | None:
    """The id `scontrol requeue` takes for this job: `<SLURM_ARRAY_JOB_ID>_<SLURM_ARRAY_TASK_ID>`
    for a task of an array job, else SLURM_JOB_ID; None outside SLURM."""
    env = os.environ if env is None else env
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID") or None
