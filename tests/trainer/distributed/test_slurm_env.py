"""SLURM's environment read as torchrun's (trainer/distributed/slurm.py): ranks, rendezvous, precedence."""

from __future__ import annotations

import pytest

from tests.helpers import error_of
from trainer.distributed import slurm
from trainer.distributed.slurm import (
    adopt_slurm_environment,
    expand_nodelist,
    expand_tasks_per_node,
    job_to_requeue,
    master_port,
    placement_from,
    restart_count,
)

# What srun sets in task 3 of `srun -N 2 -n 4` (two tasks per node), as SLURM 22.05 writes it.
SRUN_TASK = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_PROCID": "3",
    "SLURM_NTASKS": "4",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_STEP_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
}


REAL_SCONTROL_HOSTNAMES = slurm._scontrol_hostnames


@pytest.fixture(autouse=True)
def no_scontrol(monkeypatch):
    """The parser alone (scontrol is not on every test machine; where it is, it must agree: see below)."""
    monkeypatch.setattr(slurm, "_scontrol_hostnames", lambda nodelist: [])


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-03,05]", ["node01", "node02", "node03", "node05"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("gpu[1-2],cpu7,big[3]", ["gpu1", "gpu2", "cpu7", "big3"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("a-1,b.example.com", ["a-1", "b.example.com"]),
    ],
)
def test_node_lists_expand_in_order_with_their_padding(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["node[01-03", "node01]", "node[a-c]", "node[1-2]]"])
def test_a_node_list_that_cannot_be_read_is_one_line_naming_it(nodelist):
    message = error_of(lambda: expand_nodelist(nodelist))
    assert nodelist in message and "set MASTER_ADDR" in message


def test_the_parser_agrees_with_scontrol_where_it_is_installed(tmp_path, monkeypatch):
    import shutil

    if shutil.which("scontrol") is None:
        pytest.skip("scontrol is not installed (apt-get install slurm-client)")
    # scontrol wants a slurm.conf even to expand a list; a cluster has one, a test machine may not
    (tmp_path / "slurm.conf").write_text("ClusterName=x\nSlurmctldHost=localhost\n")
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    for nodelist in ("node[01-03,05],gpu7", "rack[1-2]-n[1,3]", "node[098-101]"):
        assert REAL_SCONTROL_HOSTNAMES(nodelist) == expand_nodelist(nodelist)


@pytest.mark.parametrize(("text", "counts"), [("4", [4]), ("2(x3),1", [2, 2, 2, 1]), ("", []), ("weird", [])])
def test_tasks_per_node_expand(text, counts):
    assert expand_tasks_per_node(text) == counts


def test_an_srun_task_is_a_rank_meeting_on_the_first_node_at_a_port_from_the_job_id():
    placement = placement_from(SRUN_TASK)
    assert placement is not None
    assert (placement.rank, placement.local_rank, placement.world_size, placement.local_world_size) == (3, 1, 4, 2)
    assert (placement.master_addr, placement.master_port) == ("gpu07", 10000 + 4242 % 20000)
    assert placement.as_torchrun_environment() == {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "14242",
    }


def test_the_step_node_list_wins_over_the_job_one():
    # srun -N 1 inside a two-node allocation: rank 0 runs on the step's first node
    task = {**SRUN_TASK, "SLURM_STEP_NODELIST": "gpu08", "SLURM_STEP_TASKS_PER_NODE": "4", "SLURM_NODEID": "0"}
    placement = placement_from(task)
    assert (placement.master_addr, placement.local_world_size) == ("gpu08", 4)


def test_master_addr_and_master_port_set_by_the_user_are_kept():
    placement = placement_from({**SRUN_TASK, "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29555"})
    assert (placement.master_addr, placement.master_port) == ("10.0.0.5", 29555)


def test_ports_stay_in_their_range_for_any_job_id():
    assert master_port({"SLURM_JOB_ID": "0"}) == 10000
    assert master_port({"SLURM_JOB_ID": "19999"}) == 29999
    assert master_port({"SLURM_JOB_ID": "20000"}) == 10000
    assert master_port({"SLURM_JOB_ID": "987654321"}) == 10000 + 987654321 % 20000


@pytest.mark.parametrize(
    "env",
    [
        {**SRUN_TASK, "WORLD_SIZE": "8"},  # torchrun under srun (one torchrun per node): torchrun's variables win
        {**SRUN_TASK, "RANK": "0"},
        {key: value for key, value in SRUN_TASK.items() if key != "SLURM_STEP_ID"},  # the batch script itself
        {**SRUN_TASK, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},  # one task: a single-process run
        {},  # no SLURM at all
    ],
    ids=["torchrun-world-size", "torchrun-rank", "batch-step", "one-task", "no-slurm"],
)
def test_slurm_ranks_only_for_an_srun_step_of_several_tasks_without_torchrun(env):
    assert placement_from(env) is None
    copy = dict(env)
    assert adopt_slurm_environment(copy) is None and copy == env  # nothing written


def test_adopting_writes_torchruns_variables():
    env = dict(SRUN_TASK)
    adopt_slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("3", "4", "1", "gpu07")
    assert placement_from(env) is None  # from now on torchrun's variables are there, and win


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SLURM_PROCID": "x"}, "SLURM_PROCID='x'"),
        ({"SLURM_NTASKS": "0"}, "SLURM_NTASKS='0'"),
        ({"SLURM_PROCID": "4"}, "SLURM_PROCID=4 is not below SLURM_NTASKS=4"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        ({"MASTER_PORT": "http"}, "MASTER_PORT='http'"),
        ({"SLURM_JOB_ID": "abc"}, "SLURM_JOB_ID='abc'"),
        ({"SLURM_STEP_NODELIST": "", "SLURM_JOB_NODELIST": ""}, "SLURM_STEP_NODELIST and SLURM_JOB_NODELIST are empty"),
    ],
)
def test_a_variable_slurm_would_not_write_is_one_line_naming_it(changes, named):
    assert named in error_of(lambda: placement_from({**SRUN_TASK, **changes}))


def test_the_job_to_requeue_is_the_array_task_when_there_is_one():
    assert job_to_requeue({"SLURM_JOB_ID": "77"}) == "77"
    assert job_to_requeue({"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "7"}) == "70_7"
    assert job_to_requeue({}) is None


def test_restart_count_only_when_slurm_set_it():
    assert restart_count({"SLURM_RESTART_COUNT": "2"}) == 2
    assert restart_count({}) is None
    assert restart_count({"SLURM_RESTART_COUNT": "?"}) is None


def test_the_resume_line_names_the_restart_count_of_a_requeued_job(monkeypatch):
    from pathlib import Path

    from trainer.checkpoint.restore import resume_notes

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    plain = resume_notes(Path("w/x_iter_20.pt"), 20, 0, [], False, (2, 2))
    assert plain == ["resumed from w/x_iter_20.pt at iteration 20 (epoch 0)"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    notes = resume_notes(Path("w/x_iter_20.pt"), 20, 0, [], False, (2, 2))
    assert notes == ["resumed from w/x_iter_20.pt at iteration 20 (epoch 0), SLURM_RESTART_COUNT 3"]
