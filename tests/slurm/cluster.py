"""A real single-node Slurm for the tests, started as ../shared/slurm/README.md describes.

Everything lives in one temporary folder: a munge key and socket of our own (the
machine's munged, if any, is left alone), slurm.conf and gres.conf rendered from
the shared templates with our own ports, state, spool and log folders, and two
fake GPUs made with mknod (or a count-only 'vgpu' GRES where mknod is refused).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loophub.ports import free_port

NODE = "rtest"


@dataclass
class SlurmCluster:
    root: Path
    gres_name: str  # 'gpu' (device files, CUDA_VISIBLE_DEVICES set) or 'vgpu' (count only)
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def has_gpu_files(self) -> bool:
        return self.gres_name == "gpu"

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                             timeout=timeout, check=False)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(argv)} exit {out.returncode}: {out.stderr}")
        return out.stdout

    # -- daemons ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 (lives with the daemon)
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start_munge(self) -> None:
        munge = self.root / "munge"
        self._spawn("munged", ["munged", "-F", "--force", f"--key-file={munge / 'munge.key'}",
                               f"--socket={munge / 'munge.socket'}",
                               f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}"])
        self._wait(lambda: (munge / "munge.socket").exists(), 10, "munged socket")

    def start_controller(self) -> None:
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait(self._controller_answers, 30, "slurmctld to answer")

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def start_node(self) -> None:
        self._spawn("slurmd", ["slurmd", "-D", "-N", NODE])

    def _controller_answers(self) -> bool:
        return subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True,
                              text=True, check=False).stdout.count("UP") > 0

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-o", "%T", check=False).strip()

    def wait_idle(self, timeout: float = 60) -> None:
        def idle() -> bool:
            state = self.node_state()
            if "drain" in state:
                self.run("scontrol", "update", f"nodename={NODE}", "state=resume", check=False)
            return state == "idle"
        self._wait(idle, timeout, "the node to be idle")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def cancel_all(self, timeout: float = 20) -> None:
        """Jobs outlive slurmd (slurmstepd runs them): end them before the daemons."""
        if "slurmctld" not in self.procs:
            return
        jobs = self.run("squeue", "-h", "-o", "%i", check=False).split()
        if jobs:
            self.run("scancel", *jobs, check=False)
        deadline = time.monotonic() + timeout
        while self.run("squeue", "-h", "-o", "%i", check=False).strip():
            if time.monotonic() > deadline:
                break
            time.sleep(0.3)

    def stop(self) -> None:
        self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):  # node first: it tells the controller
            self._stop(name)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}\n{self.logs()}")
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}\n{self.logs()}")


def _make_gpus(dev: Path) -> bool:
    """Two fake NVIDIA device files; False where the kernel refuses mknod."""
    dev.mkdir()
    for i in (0, 1):
        try:
            os.mknod(dev / f"nvidia{i}", 0o600 | 0o020000, os.makedev(195, i))
        except (PermissionError, OSError):
            return False
    return True


def _render(template: str, root: Path, gres: str, ctl_port: int, node_port: int) -> str:
    text = template.replace("SLURM_DIR", str(root))
    text = text.replace("SlurmctldPort=16817", f"SlurmctldPort={ctl_port}")
    text = text.replace("SlurmdPort=16818", f"SlurmdPort={node_port}")
    # slurmctld only runs on the host named in SlurmctldHost
    text = text.replace(f"SlurmctldHost={NODE}(", f"SlurmctldHost={socket.gethostname()}(")
    if gres == "vgpu":
        text = text.replace("GresTypes=gpu", "GresTypes=vgpu").replace("Gres=gpu:2", "Gres=vgpu:2")
    socket_path = root / "munge" / "munge.socket"
    return text + f"AuthInfo=socket={socket_path}\n"


def prepare(shared: Path, root: Path) -> SlurmCluster:
    """Folders, munge key and config files under ROOT, from the shared templates."""
    for sub in ("state", "spool", "run", "log", "etc", "munge"):
        (root / sub).mkdir(parents=True)
    root.chmod(0o711)
    (root / "munge").chmod(0o711)  # munged wants its socket folder searchable
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    gres = "gpu" if _make_gpus(root / "dev") else "vgpu"
    templates = shared / "slurm"
    conf = _render((templates / "slurm.conf").read_text(), root, gres, free_port(), free_port())
    (root / "etc" / "slurm.conf").write_text(conf)
    if gres == "gpu":
        gres_conf = (templates / "gres.conf").read_text().replace("SLURM_DIR", str(root))
    else:
        gres_conf = f"NodeName={NODE} Name=vgpu Count=2\n"
    (root / "etc" / "gres.conf").write_text(gres_conf)
    env = {**os.environ, "SLURM_CONF": str(root / "etc" / "slurm.conf")}
    return SlurmCluster(root=root, gres_name=gres, env=env)


def missing_binaries() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scancel", "munged")
            if shutil.which(b) is None]
