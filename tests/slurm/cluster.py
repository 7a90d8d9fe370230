"""A real single-node SLURM cluster for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd.

Everything lives under one scratch folder (configs, state, logs, the database)
and every daemon is started in the foreground as a child process, so `stop()`
ends exactly the processes it started, by PID. The node has a `debug`
partition (default) and a `gpu` partition with one fake GPU that the
scheduler accounts for (gres on /dev/null). Accounting runs through slurmdbd
and MariaDB, so `sacct` works as on a real cluster (the Snakemake SLURM plugin
asks it for job states).

    python tests/slurm/cluster.py start /tmp/slurm   # prints `export SLURM_CONF=...`
    python tests/slurm/cluster.py stop /tmp/slurm
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
ACCOUNT = "lfads"
CLUSTER = "lfadstest"


class ClusterError(RuntimeError):
    pass


def available() -> str | None:
    """None where the SLURM, munge and MariaDB programs are installed and we are root; else why."""
    missing = [
        name
        for name in DAEMONS + ("sacctmgr", "sbatch", "sacct", "mariadb-install-db")
        if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()
    ]
    if missing:
        packages = "slurm-wlm slurmdbd munge mariadb-server"
        return f"not installed: {', '.join(missing)} (apt-get install {packages})"
    if os.geteuid() != 0:
        return "starting SLURM daemons needs root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_line() -> str:
    line = subprocess.run(
        ["slurmd", "-C"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    # leave memory headroom: jobs ask for mem_mb and the node must fit them
    return line + " Gres=gpu:1 State=UNKNOWN"


class LocalSlurm:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.pids_file = self.root / "pids.json"

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM client commands (sbatch, sacct, squeue) and Snakemake."""
        return {"SLURM_CONF": str(self.conf)}

    # -- configuration ---------------------------------------------------------------
    def _write_configs(self, db_port: int) -> None:
        etc, state, log = self.root / "etc", self.root / "state", self.root / "log"
        for folder in (etc, state / "ctld", state / "d", log):
            folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER}",
                    f"SlurmctldHost={self.host}",
                    "AuthType=auth/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "GresTypes=gpu",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    f"AccountingStorageHost={self.host}",
                    "AccountingStorageTRES=gres/gpu",
                    "AccountingStoreFlags=job_comment",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    "KillWait=5",  # SIGTERM to SIGKILL at a time limit (default 30 s)
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    f"StateSaveLocation={state / 'ctld'}",
                    f"SlurmdSpoolDir={state / 'd'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={log / 'slurmctld.log'}",
                    f"SlurmdLogFile={log / 'slurmd.log'}",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=sched_interval=2",
                    _node_line(),
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    f"PartitionName=gpu Nodes={self.host} MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        (etc / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n"
        )
        dbd = etc / "slurmdbd.conf"
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"DbdHost={self.host}",
                    "SlurmUser=root",
                    f"LogFile={log / 'slurmdbd.log'}",
                    f"PidFile={self.root / 'slurmdbd.pid'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={db_port}",
                    "StorageUser=slurm",
                    "StoragePass=slurm",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        dbd.chmod(0o600)
        # Job steps (`srun` inside an allocation) do not see SLURM_CONF from the submitting
        # shell and look in /etc/slurm: point it at this cluster's files while it runs.
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
            system = Path("/etc/slurm") / name
            if system.is_symlink() or not system.exists():
                system.parent.mkdir(parents=True, exist_ok=True)
                system.unlink(missing_ok=True)
                system.symlink_to(etc / name)
            else:
                raise ClusterError(
                    f"{system} exists and is not ours; this test cluster would override it"
                )

    # -- processes --------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], pids: dict, user: str | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        if user:
            argv = ["runuser", "-u", user, "--"] + argv
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        pids[name] = process.pid
        self.pids_file.write_text(json.dumps(pids))

    def _wait_for(self, what: str, check, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        logs = "\n".join(
            f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.root / "log").glob("*"))
        )
        raise ClusterError(f"{what} did not come up within {timeout:.0f} s\n{logs}")

    @staticmethod
    def _ok(argv: list[str], env: dict | None = None) -> bool:
        return (
            subprocess.run(argv, capture_output=True, env={**os.environ, **(env or {})}).returncode
            == 0
        )

    def start(self) -> LocalSlurm:
        reason = available()
        if reason:
            raise ClusterError(reason)
        self.stop()
        if self.root.exists():
            shutil.rmtree(self.root)
        (self.root / "log").mkdir(parents=True)
        pids: dict[str, int] = {}
        db_port = _free_port()
        self._write_configs(db_port)
        try:
            # munge: its socket lives in /run/munge, owned by the munge user
            Path("/run/munge").mkdir(exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            self._spawn(
                "munged", ["/usr/sbin/munged", "--foreground", "--force"], pids, user="munge"
            )
            self._wait_for("munged", lambda: self._ok(["munge", "-n"]))
            # MariaDB with its own data folder on a loopback port
            datadir = self.root / "mysql"
            sock = datadir / "mysql.sock"  # the mysql user must be able to create it
            subprocess.run(
                [
                    "mariadb-install-db",
                    f"--datadir={datadir}",
                    "--user=mysql",
                    "--auth-root-authentication-method=socket",
                ],
                check=True,
                capture_output=True,
            )
            shutil.chown(self.root, "root", "root")
            self.root.chmod(0o755)
            self._spawn(
                "mariadbd",
                [
                    "/usr/sbin/mariadbd",
                    f"--datadir={datadir}",
                    f"--socket={sock}",
                    f"--port={db_port}",
                    "--bind-address=127.0.0.1",
                    "--user=mysql",
                    f"--pid-file={datadir / 'mariadbd.pid'}",
                ],
                pids,
            )
            self._wait_for(
                "mariadbd", lambda: self._ok(["mariadb", f"--socket={sock}", "-e", "select 1"])
            )
            sql = (
                "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
                "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
            )
            subprocess.run(
                ["mariadb", f"--socket={sock}", "-e", sql], check=True, capture_output=True
            )
            self._spawn("slurmdbd", ["/usr/sbin/slurmdbd", "-D"], pids)
            self._wait_for(
                "slurmdbd", lambda: self._ok(["sacctmgr", "-n", "list", "cluster"], self.env)
            )
            for command in (
                ["add", "cluster", CLUSTER],
                ["add", "account", ACCOUNT, f"Cluster={CLUSTER}"],
                ["add", "user", "root", f"Account={ACCOUNT}", f"Cluster={CLUSTER}"],
            ):
                subprocess.run(
                    ["sacctmgr", "-i", *command],
                    env={**os.environ, **self.env},
                    capture_output=True,
                )
            self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i"], pids)
            self._spawn("slurmd", ["/usr/sbin/slurmd", "-D"], pids)
            self._wait_for(
                "the node",
                lambda: (
                    "idle"
                    in subprocess.run(
                        ["sinfo", "-h", "-o", "%T"],
                        capture_output=True,
                        text=True,
                        env={**os.environ, **self.env},
                    ).stdout
                ),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _unlink_system_config(self) -> None:
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
            system = Path("/etc/slurm") / name
            if system.is_symlink() and str(os.readlink(system)).startswith(str(self.root)):
                system.unlink()

    def stop(self) -> None:
        """Stop every daemon this folder's start() launched, by PID (newest first)."""
        self._unlink_system_config()
        if not self.pids_file.exists():
            return
        pids = json.loads(self.pids_file.read_text())
        for name in reversed(list(pids)):
            try:
                os.killpg(pids[name], signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 20
        for name in reversed(list(pids)):
            while time.monotonic() < deadline:
                try:
                    os.kill(pids[name], 0)
                    waited = os.waitpid(pids[name], os.WNOHANG) if _is_child(pids[name]) else (0, 0)
                    if waited[0]:
                        break
                    time.sleep(0.2)
                except (ProcessLookupError, ChildProcessError):
                    break
            else:
                try:
                    os.killpg(pids[name], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.pids_file.unlink()


def _is_child(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) is not None
    except ChildProcessError:
        return False


if __name__ == "__main__":
    action, folder = sys.argv[1], sys.argv[2]
    cluster = LocalSlurm(folder)
    if action == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    elif action == "stop":
        cluster.stop()
    else:
        raise SystemExit("usage: cluster.py start|stop FOLDER")
