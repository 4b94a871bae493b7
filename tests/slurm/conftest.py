"""A real single-node SLURM for the tests: munge, slurmctld and slurmd on 127.0.0.1, started once.

The `slurm` fixture writes a slurm.conf into a temporary directory (the node line from `slurmd
-C`, state, spool and logs beside it, free ports, a random first job id), starts the three
daemons in the foreground as children of the test process, waits until the node is idle, and
stops them at the end: jobs first (scancel, then until squeue is empty), then the daemons. It
skips with the reason when SLURM's packages are not installed (`apt-get install slurmctld slurmd
slurm-client munge`) or the tests do not run as root (slurmd starts jobs as their user; the
daemons run as root, SlurmUser=root).

Every client command gets SLURM_CONF (and munge's socket through AuthInfo in the conf), so
nothing under /etc is read or written and a SLURM installed on the machine is not touched. Two
such SLURMs never collide (their ports, directories and job ids are their own), though the
suite starts one only: the tests that need it live in one module, which `--dist loadfile` runs
on one worker.
"""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import free_port
from utils.stopping import signal_on_parent_death

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "sbatch", "scontrol", "scancel", "squeue", "sinfo")
# Daemons live in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge"
START_TIMEOUT_S = 60


@dataclass
class Slurm:
    """A running single-node SLURM: its directory and the environment its clients need."""

    root: Path
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *command: str, timeout: float = 60, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a client command (scontrol, squeue, ...) against this SLURM; its output captured."""
        result = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o ID` as {field: value} (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def wait_for_job(self, job_id: str, done, timeout: float = 120, what: str = "") -> dict[str, str]:
        """Poll the job until `done(fields)`; its fields then. AssertionError with the fields after `timeout`."""
        deadline = time.monotonic() + timeout
        fields = self.job(job_id)
        while not done(fields):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} did not reach {what or 'the state waited for'} in {timeout} s: {fields}")
            time.sleep(0.2)
            fields = self.job(job_id)
        return fields

    def logs(self) -> str:
        """The tails of the daemons' logs, for a failure message."""
        tails = []
        for path in sorted((self.root / "log").glob("*")):
            tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(tails)


def _missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name, path=SEARCH_PATH) is None]


def _user() -> str:
    """The name of the user these tests run as (root: see the module docstring)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _client_env(conf: Path) -> dict[str, str]:
    """This process's environment without any SLURM variables (a suite run inside a real SLURM
    job must not requeue that job), with SLURM_CONF pointing at ours and /usr/sbin on PATH."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    return {**env, "SLURM_CONF": str(conf), "PATH": SEARCH_PATH, "OMP_NUM_THREADS": "1"}


def _write_munge_key(directory: Path) -> None:
    """A fresh munge key (1 KiB of randomness, mode 0600: munged refuses a readable one)."""
    directory.mkdir(mode=0o755)  # the socket lives here: clients must be able to reach it
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)


def _node_line() -> str:
    """`slurmd -C`'s first line (NodeName=... CPUs=... RealMemory=...), addressed at 127.0.0.1."""
    result = subprocess.run([shutil.which("slurmd", path=SEARCH_PATH), "-C"], capture_output=True, text=True, timeout=30)
    line = result.stdout.splitlines()[0] if result.returncode == 0 and result.stdout else ""
    if not line.startswith("NodeName="):
        raise AssertionError(f"slurmd -C did not describe this node: {result.stdout!r} {result.stderr!r}")
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def write_slurm_conf(root: Path) -> Path:
    """slurm.conf for one node on 127.0.0.1, every file under `root`; returns its path."""
    for name in ("state", "spool", "log"):
        (root / name).mkdir()
    user = _user()
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=kilntest",
                f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
                f"SlurmctldPort={free_port()}",
                f"SlurmdPort={free_port()}",
                f"SlurmUser={user}",
                f"SlurmdUser={user}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={root / 'munge' / 'munge.socket'}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                # Job ids are the rendezvous port's seed (trainer/distributed/slurm.py): another
                # SLURM started by a concurrent test session must not hand out the same ones.
                f"FirstJobId={random.randrange(1000, 60000)}",
                "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers)
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_CPU",
                "SchedulerType=sched/builtin",
                "MpiDefault=none",
                "MailProg=/bin/true",
                "ReturnToService=2",  # a node that was down comes back by itself
                "JobRequeue=1",
                "MinJobAge=600",  # finished jobs stay visible to `scontrol show job` (no accounting here)
                "KillWait=10",
                _node_line(),
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _start(slurm: Slurm, name: str, *args: str) -> None:
    """Start daemon `name` in the foreground (it stays our child), its output in log/<name>.out."""
    log = (slurm.root / "log" / f"{name}.out").open("w")
    process = subprocess.Popen(
        [shutil.which(name, path=SEARCH_PATH), *args],
        env=slurm.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C of pytest reaches pytest, which then stops the daemons in order
        preexec_fn=lambda: signal_on_parent_death(signal.SIGTERM),  # a killed pytest leaves no daemon behind
    )
    log.close()
    slurm.processes.append(process)


def _wait_until(slurm: Slurm, ready, what: str) -> None:
    """Poll `ready()` until it holds; AssertionError with the daemons' logs after START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [process.args[0] for process in slurm.processes if process.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise AssertionError(f"SLURM did not come up ({what}; exited: {dead}):\n{slurm.logs()}")
        time.sleep(0.2)


def start_slurm(slurm: Slurm) -> None:
    """Start munged, slurmctld and slurmd under `slurm.root`; return once the node is idle."""
    root, conf, munge = slurm.root, Path(slurm.env["SLURM_CONF"]), slurm.root / "munge"
    key = munge / "munge.key"
    _start(
        slurm,
        "munged",
        "--foreground",
        "--force",  # root, and a socket directory under /tmp: munged's paranoia, not a problem in a test
        f"--socket={munge / 'munge.socket'}",
        f"--key-file={key}",
        f"--pid-file={munge / 'munged.pid'}",
        f"--seed-file={munge / 'munged.seed'}",
        f"--log-file={root / 'log' / 'munged.log'}",
    )
    _wait_until(slurm, (munge / "munge.socket").exists, "munged's socket")
    _start(slurm, "slurmctld", "-D", "-i", "-f", str(conf))
    _wait_until(slurm, lambda: "UP" in slurm.run("scontrol", "ping", check=False).stdout, "slurmctld answering ping")
    _start(slurm, "slurmd", "-D", "-f", str(conf))
    _wait_until(slurm, lambda: slurm.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", "the node idle")


def stop_slurm(slurm: Slurm) -> None:
    """Cancel every job (their processes are slurmstepd's, not ours), then stop the daemons, newest first."""
    slurm.run("scancel", "--full", "--user", _user(), check=False)
    deadline = time.monotonic() + 30
    while slurm.run("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in reversed(slurm.processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module", autouse=True)
def outside_any_slurm_job() -> Iterator[None]:
    """The SLURM variables of a job the suite itself runs in are gone while these tests run: a
    run they stop must never requeue that job (the test's own runs set what they pretend)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("SLURM_")]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slurm]:
    """A single-node SLURM for the session (skips where it cannot run)."""
    missing = _missing_binaries()
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found); to run these tests: {INSTALL_HINT}")
    if os.geteuid() != 0:
        pytest.skip("the test SLURM runs slurmd as root (it starts jobs as their user); run these tests as root")
    root = tmp_path_factory.mktemp("slurm")
    _write_munge_key(root / "munge")
    slurm = Slurm(root, _client_env(write_slurm_conf(root)))
    try:
        start_slurm(slurm)
        yield slurm
    finally:
        stop_slurm(slurm)
