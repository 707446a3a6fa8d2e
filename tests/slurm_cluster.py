"""A throwaway SLURM cluster on this machine, for the tests of `hydra/launcher=slurm`.

munged, slurmctld and two slurmd daemons (nodes `n1` and `n2`, both 127.0.0.1), every file in
one temporary directory and on free ports, so nothing of the machine's own SLURM or munge set-up
is used or changed, except that `n1` and `n2` must resolve to 127.0.0.1 (the cluster adds them to
/etc/hosts when they do not, and takes them out again). Needs Debian's `slurmctld`, `slurmd`,
`slurm-client` and `munge` (`make test` installs them as root), and root (the daemons run as root).

    python tests/slurm_cluster.py /tmp/cluster     # start one by hand; prints the SLURM_CONF to export

Clients find the cluster through the environment: `SLURM_CONF` (see `Cluster.env`).
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue")
NODES = ("n1", "n2")
PARTITION = "debug"
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# vaelab test cluster"
# Each node says it has more cores and memory than the machine: SLURM then schedules what the
# docs/devices.md's launcher config asks for (4 cpus per task, 32 GB per node) on this small machine, four
# jobs to a node, so that the tests can run their sweeps side by side (tests/test_slurm.py).
NODE_CPUS, NODE_MEMORY_MB = 16, 131072

SLURM_CONF = """\
ClusterName=vaelabtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool-%n
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd-%n.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
# KillWait: the seconds between SIGTERM and SIGKILL when SLURM (or srun's --kill-on-bad-exit) stops a
# task; submitit's tasks ignore SIGTERM, so a stopped task always waits that long (30 s by default).
SchedulerParameters=sched_interval=1
KillWait=2
MinJobAge=600
FirstJobId={first_job_id}
{nodes}
PartitionName={partition} Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""
NODE_LINE = "NodeName={name} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} RealMemory={memory} State=UNKNOWN"


def missing() -> Optional[str]:
    """Why no cluster can be started here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return (f"no SLURM here ({', '.join(absent)} not found): apt-get install slurmctld slurmd slurm-client munge "
                f"(make test does, as root) to run the SLURM tests")
    if os.geteuid() != 0:
        return "the test SLURM cluster's daemons need root"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name) == "127.0.0.1"
    except OSError:
        return False


class Cluster:
    def __init__(self, directory: Path):
        self.dir = Path(directory).resolve()
        self.processes: list[subprocess.Popen] = []
        self.added_hosts = False

    @property
    def env(self) -> dict[str, str]:
        """What a SLURM client (sbatch, squeue, scontrol, submitit) needs to find this cluster."""
        return {"SLURM_CONF": str(self.dir / "slurm.conf")}

    def start(self, timeout: float = 60) -> "Cluster":
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "state").mkdir(exist_ok=True)
        self._map_node_names()
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        nodes = "\n".join(NODE_LINE.format(name=n, port=p, cpus=NODE_CPUS, memory=NODE_MEMORY_MB)
                          for n, p in zip(NODES, node_ports))
        # Lightning takes a SLURM job's MASTER_PORT from its id: ids of their own keep two clusters apart.
        first_job_id = random.randrange(1000, 9000, 100)
        (self.dir / "slurm.conf").write_text(SLURM_CONF.format(
            dir=self.dir, ctld_port=ctld_port, nodes=nodes, partition=PARTITION, node_list=",".join(NODES),
            first_job_id=first_job_id))
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        conf = str(self.dir / "slurm.conf")
        env = {**os.environ, **self.env}
        self._spawn(["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={self.dir / 'munge.socket'}",
                     f"--pid-file={self.dir / 'munged.pid'}", f"--log-file={self.dir / 'munged.log'}",
                     f"--seed-file={self.dir / 'munged.seed'}"], env)
        self._wait(lambda: (self.dir / "munge.socket").exists(), timeout, "munged did not start")
        self._spawn(["slurmctld", "-D", "-i", "-f", conf], env)
        self._wait(lambda: self._run(["scontrol", "ping"]).returncode == 0, timeout, "slurmctld did not answer")
        for name in NODES:
            self._spawn(["slurmd", "-D", "-N", name, "-f", conf], env)
        self._wait(self._nodes_idle, timeout, "the nodes did not come up")
        return self

    def stop(self) -> None:
        """Cancel every job (their tasks ignore SIGTERM: submitit's handler), then stop the daemons."""
        if self.processes and self.processes[-1].poll() is None:
            try:
                self._run(["scancel", "--full", "--signal=KILL", f"--user={os.getuid()}"])
                deadline = time.monotonic() + 30
                while self._run(["squeue", "--noheader"]).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(0.5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.added_hosts:
            lines = HOSTS_FILE.read_text().splitlines(keepends=True)
            HOSTS_FILE.write_text("".join(line for line in lines if HOSTS_MARK not in line))
            self.added_hosts = False

    def logs(self) -> str:
        """The daemons' logs, for a test that failed."""
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.dir.glob("*.log")))

    def _map_node_names(self) -> None:
        if all(_resolves_to_loopback(name) for name in NODES):
            return
        with HOSTS_FILE.open("a") as hosts:
            hosts.write(f"127.0.0.1 {' '.join(NODES)}  {HOSTS_MARK}\n")
        self.added_hosts = True

    def _spawn(self, command: list[str], env: dict[str, str]) -> None:
        log = (self.dir / f"{Path(command[0]).name}-{len(self.processes)}.out").open("w")
        self.processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def _run(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30)

    def _nodes_idle(self) -> bool:
        states = self._run(["sinfo", "-h", "-N", "-o", "%N %T"]).stdout.split()
        return states.count("idle") == len(NODES)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead:
                break
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{what} (see {self.dir}):\n{self.logs()}")


if __name__ == "__main__":
    reason = missing()
    if reason:
        sys.exit(reason)
    cluster = Cluster(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/vaelab-slurm")).start()
    print(f"export SLURM_CONF={cluster.env['SLURM_CONF']}   # Ctrl-C (or SIGTERM) stops the cluster", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
