"""Two torchrun agents (two "nodes" on one machine, c10d rendezvous): same run, restarts, failures.

The agents are two separate `torch.distributed.run` processes with `--nnodes=2 --nproc_per_node=1`,
as on two machines; here they share the work directory, as nodes share `checkpoint.dir`.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch.distributed as dist

from tests.helpers import CNN_RUN, TRAIN_PY, assert_bitwise_equal, free_port, load_params, torchrun, write_config
from trainer.distributed import process as distributed

# -- the generation protocol, against a real TCPStore ------------------------------------------


def _start_rank(port: int, rank: int, world_size: int, restart_count: int, results, timeout_s: float = 30.0):
    """A worker of one attempt: its own TORCHELASTIC_RESTART_COUNT, a client of the agent's store."""
    os.environ["TORCHELASTIC_RESTART_COUNT"] = str(restart_count)
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=datetime.timedelta(seconds=30))
    try:
        results.put((rank, distributed._agreed_generation(store, rank, world_size, datetime.timedelta(seconds=timeout_s))))
    except RuntimeError as error:
        results.put((rank, str(error)))


def _attempt(context, port: int, restart_counts: list[int], only: list[int] | None = None, timeout_s: float = 30.0) -> dict:
    """Run one attempt's ranks (forked: torch is already imported) and return {rank: generation or error}."""
    results = context.Queue()
    ranks = only if only is not None else range(len(restart_counts))
    processes = [
        context.Process(target=_start_rank, args=(port, rank, len(restart_counts), restart_counts[rank], results, timeout_s))
        for rank in ranks
    ]
    try:
        for process in processes:
            process.start()
        return dict(results.get(timeout=60) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def test_every_rank_of_a_restart_agrees_on_a_new_generation_whatever_its_restart_count():
    # The agent's store outlives its workers; the test process plays the agent and hosts it.
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30))
    context = multiprocessing.get_context("fork")
    first = _attempt(context, server.port, [0, 0])
    assert first[0] == first[1], first
    # Rank 0's worker failed: its agent counts a restart, rank 1's agent (restarted for the
    # membership change) does not. The first attempt's keys are still in the store.
    second = _attempt(context, server.port, [1, 0])
    assert second[0] == second[1] != first[0], (first, second)
    # Rank 1 is killed before it reaches the store: rank 0 alone makes generation 3 and gives up.
    third = _attempt(context, server.port, [1, 1], only=[0], timeout_s=1)
    assert "rank 0: ranks [1] did not join generation" in str(third[0]), third
    # Next attempt, rank 1 first: generation 3 looks new to it, but no live rank 0 answers there.
    results = context.Queue()
    early = context.Process(target=_start_rank, args=(server.port, 1, 2, 2, results))
    late = context.Process(target=_start_rank, args=(server.port, 0, 2, 1, results))
    try:
        early.start()
        deadline = time.monotonic() + 30
        while not server.check(["kiln/hello/3/1"]):  # generations 1, 2, 3 so far; rank 1 waits on 3
            assert time.monotonic() < deadline, "rank 1 never said hello to the dead generation"
            time.sleep(0.02)
        late.start()
        fourth = dict(results.get(timeout=60) for _ in range(2))
    finally:
        for process in (early, late):
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    assert fourth[0] == fourth[1] == 4, fourth


# -- two agents, end to end ---------------------------------------------------------------------


def _kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment carries `tag` (agents and their workers, whatever their session)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if tag.encode() in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:  # gone already, or not ours
            pass


def two_agents(
    workdir: Path, *args: str, max_restarts: int, timeout: float = 200, cwds: tuple[Path, Path] | None = None
) -> list[tuple[int, str]]:
    """Two `torchrun --nnodes=2 --nproc_per_node=1` agents (c10d rendezvous) of train.py ARGS: [(exit code, output)] each.

    They run in `workdir`, or each in its own of `cwds` (two nodes whose relative paths differ)."""
    port, tag = free_port(), f"kiln-multinode-{uuid.uuid4().hex}"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id={tag}",
        f"--max-restarts={max_restarts}",
        str(TRAIN_PY),
        *args,
    ]
    # torchrun sets OMP_NUM_THREADS only for several processes per node
    env = {**os.environ, "PYTHONPATH": str(workdir), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "KILN_TEST_TAG": tag}
    logs = [workdir / f"agent_{index}.log" for index in range(2)]
    agents: list[subprocess.Popen] = []
    try:
        for log, cwd in zip(logs, cwds or (workdir, workdir), strict=True):
            with log.open("w") as output:
                agents.append(
                    subprocess.Popen(
                        command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                    )
                )
        deadline = time.monotonic() + timeout
        for agent in agents:
            try:
                agent.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill_tagged(tag)
                tails = "\n".join(f"--- {log.name}:\n{log.read_text()[-2500:]}" for log in logs)
                pytest.fail(f"the two agents did not finish within {timeout} s (a hang)\n{tails}")
        return [(agent.returncode, log.read_text()) for agent, log in zip(agents, logs, strict=True)]
    finally:
        _kill_tagged(tag)
        for agent in agents:
            agent.wait()


@pytest.fixture(scope="module")
def one_agent_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CNN_RUN trained by one agent with 2 processes (`--standalone --nproc_per_node=2`), uninterrupted."""
    workdir = tmp_path_factory.mktemp("one_agent")
    result = torchrun(workdir, "-c", str(write_config(workdir / "cnn.yaml", CNN_RUN)))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


KILLED_MODEL = """
import os
import signal
from pathlib import Path

from models.simple_cnn import SimpleCNN


class KilledCNN(SimpleCNN):
    \"\"\"SimpleCNN whose rank-1 process is SIGKILLed at its {at}th training forward, once per work directory.\"\"\"

    calls = 0

    def forward(self, images):
        if self.training:
            KilledCNN.calls += 1
            rank = os.environ.get("RANK")
            if KilledCNN.calls == 1:  # each start records its agent's restart count
                with open("restart_counts.txt", "a") as counts:
                    counts.write(os.environ["TORCHELASTIC_RESTART_COUNT"] + "\\n")
            if KilledCNN.calls == {at} and rank == "1" and not Path("killed_once").exists():
                Path("killed_once").touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(images)
"""


def _killed_config(workdir: Path, at: int) -> Path:
    (workdir / "killed.py").write_text(KILLED_MODEL.format(at=at))
    document = dict(CNN_RUN, model={"type": "killed.KilledCNN", "num_classes": 10, "width": 8})
    return write_config(workdir / "cnn.yaml", document)


@pytest.mark.slow
def test_two_agents_train_bitwise_like_one_agent_with_two_processes(one_agent_reference, workdir):
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    agents = two_agents(workdir, "-c", str(config), max_restarts=0)
    assert [code for code, _ in agents] == [0, 0], agents[0][1][-3000:] + agents[1][1][-3000:]
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_60.pth"), load_params(one_agent_reference / "weights" / "tiny_iter_60.pth")
    )


@pytest.mark.slow
def test_a_sigkilled_worker_restarts_both_agents_and_the_run_resumes_bitwise(one_agent_reference, workdir):
    # Only the killed worker's agent counts a restart. Rank 0 fails in its next collective but
    # takes seconds to exit; its agent sees the other node rejoin the rendezvous first and
    # restarts its worker for that membership change, which torchrun does not count.
    config = _killed_config(workdir, at=40)
    agents = two_agents(workdir, "-c", str(config), "resume_path=auto", max_restarts=1)
    assert [code for code, _ in agents] == [0, 0], agents[0][1][-3000:] + agents[1][1][-3000:]
    assert (workdir / "killed_once").exists()
    # Usually only the killed worker's agent counts the restart (0 0 0 1: the agents disagree,
    # the case an attempt-count prefix hung on); on a loaded machine the survivor's worker may
    # fail first and both count one (0 0 1 1). Either way both attempts must have run.
    counts = sorted((workdir / "restart_counts.txt").read_text().split())
    assert counts in (["0", "0", "0", "1"], ["0", "0", "1", "1"]), f"restart counts {counts}: no restart as this test means"
    log = (workdir / "experiments" / "tiny" / "train.log").read_text()
    assert "resumed from weights/tiny_iter_25.pt at iteration 25" in log
    assert_bitwise_equal(
        load_params(workdir / "weights" / "tiny_iter_60.pth"), load_params(one_agent_reference / "weights" / "tiny_iter_60.pth")
    )


@pytest.mark.slow
def test_without_restarts_left_a_sigkilled_worker_fails_both_agents_promptly(workdir):
    config = _killed_config(workdir, at=5)
    started = time.monotonic()
    agents = two_agents(workdir, "-c", str(config), max_restarts=0, timeout=150)
    assert time.monotonic() - started < 150
    assert all(code != 0 for code, _ in agents), agents
    killed = [output for _, output in agents if "Signal 9 (SIGKILL) received by PID" in output]
    survivor = [output for _, output in agents if "Signal 9 (SIGKILL) received by PID" not in output]
    assert len(killed) == 1 and len(survivor) == 1, agents
    # The survivor's rank 0 says its peer went away (gloo: "Connection closed by peer" or "Read
    # error ...: Connection reset by peer"); the agent then ends with ChildFailedError, or with
    # RendezvousConnectionError when the dead node's agent hosted the rendezvous store.
    assert re.search(r"\[rank0\]: RuntimeError: .*by peer", survivor[0]), survivor[0][-3000:]


@pytest.mark.slow
def test_a_checkpoint_dir_that_the_nodes_do_not_share_is_exit_2_on_every_node_before_any_file(workdir):
    # Each agent starts in its own folder, so the relative checkpoint.dir `weights` is a
    # different directory on each "node": the split checkpoint a node-local disk would give.
    config = write_config(workdir / "cnn.yaml", CNN_RUN)
    nodes = (workdir / "node0", workdir / "node1")
    for node in nodes:
        node.mkdir()
    agents = two_agents(workdir, "-c", str(config), max_restarts=0, timeout=150, cwds=nodes)
    assert all(code != 0 for code, _ in agents), agents
    output = agents[0][1] + agents[1][1]
    assert re.search(
        r"error: config key checkpoint.dir: weights is not shared by every node: rank 1 \(on \S+\) does not see the file "
        r"rank 0 wrote in \S+/node0, so each node would write its own part of every checkpoint; put checkpoint.dir on a "
        r"filesystem every node mounts",
        output,
    ), output[-3000:]
    assert "Traceback" not in output.split("error: config key checkpoint.dir")[0][-2000:]
    for node in nodes:
        assert sorted(path.name for path in node.iterdir()) == []  # no weights/, no experiments/, no marker left
