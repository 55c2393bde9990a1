"""A spawner-shaped object for driving SlurmBackend without a hub, and a fake command runner."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from loophub.spawner.backends.squeue import CommandResult

LOG = logging.getLogger("tests.slurm")


@dataclass
class FakeUser:
    name: str = "alice"


@dataclass(eq=False)
class FakeSpawner:
    """What SlurmBackend uses of a FairSpawner: user, name, cmd, get_args/get_env,
    api_token, server_home, emit_progress, log (eq=False: hashable by identity, like spawners)."""

    api_url: str = "http://127.0.0.1:1/hub/api"
    home: str = ""
    cmd: list[str] = field(default_factory=lambda: ["jupyterhub-singleuser"])
    args: list[str] = field(default_factory=list)
    user: FakeUser = field(default_factory=FakeUser)
    name: str = ""
    api_token: str = field(default_factory=lambda: secrets.token_hex(16))
    user_options: dict = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    log: logging.Logger = LOG

    def emit_progress(self, progress: int, message: str) -> None:  # as FairSpawner
        self.events.append(message)

    def get_args(self) -> list[str]:
        return list(self.args)

    def get_env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "JUPYTERHUB_API_TOKEN": self.api_token,
            "JUPYTERHUB_API_URL": self.api_url,
            "JUPYTERHUB_USER": self.user.name,
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:0/user/{self.user.name}/",
        }

    def server_home(self) -> str:
        return self.home


class FakeRunner:
    """Answers commands from a script of results per program; records every call."""

    def __init__(self, delays: dict[str, float] | None = None,
                 **answers: list[CommandResult]) -> None:
        self.answers = answers
        self.delays = delays or {}
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []

    async def __call__(self, argv: list[str], *, input: str | None = None, env=None, cwd=None,
                       timeout: float = 30) -> CommandResult:
        self.calls.append(list(argv))
        self.inputs.append(input)
        # a real command takes time: concurrent callers pile up
        await asyncio.sleep(self.delays.get(argv[0], 0.01))
        queue = self.answers.get(argv[0], [])
        if len(queue) > 1:
            return queue.pop(0)
        return queue[0] if queue else CommandResult(0, "", "")

    def count(self, program: str) -> int:
        return sum(1 for argv in self.calls if argv[0] == program)


def ok(stdout: str = "") -> CommandResult:
    return CommandResult(0, stdout, "")


def down() -> CommandResult:
    return CommandResult(1, "", "slurm_load_jobs error: Unable to contact slurm controller "
                                "(connect failure)\n")
