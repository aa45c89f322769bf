"""A Docker engine and a compose project for the end-to-end deployment test (tests/deploy/test_compose_e2e.py).

Everything goes through the docker CLI and whichever compose is installed (the `docker compose` plugin
or docker-compose 1.29), exactly as a user would type it; nothing here talks to the engine's API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


def run(argv: list[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def engine_problem() -> str | None:
    """Why the end-to-end test cannot run here, or None when a Docker engine answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI on PATH"
    try:
        out = run([docker, "version", "--format", "{{.Server.Version}}"], timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine did not answer `docker version` within 20 s"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return (f"no Docker engine reachable (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}): {last}; "
                "start one, e.g. ../shared/deploy/standin-images.sh all, and export the DOCKER_HOST it prints")
    if compose_command() is None:
        return "neither the `docker compose` plugin nor docker-compose is installed"
    return None


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], timeout=20, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def build_env() -> dict[str, str]:
    """The environment for `docker build`: the legacy builder when BuildKit's CLI part (buildx) is absent.

    A docker CLI >= 23 uses BuildKit by default and fails outright without the buildx plugin; the
    Dockerfile builds the same with both builders."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env and run(["docker", "buildx", "version"], timeout=20, check=False).returncode:
        env["DOCKER_BUILDKIT"] = "0"
    return env


@dataclass
class Stack:
    """One compose project (a unique name, so it never touches anyone else's containers)."""
    project: str
    compose_file: Path
    env: dict[str, str]
    compose: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-p", self.project, "-f", str(self.compose_file), *args], timeout=timeout,
                   env=self.env, cwd=self.compose_file.parent)

    def containers(self, service: str) -> list[str]:
        out = run(["docker", "ps", "-a", "-q", "--no-trunc",
                   "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}"], timeout=30)
        return sorted(out.stdout.split())

    def inspect(self, container: str) -> dict:
        return json.loads(run(["docker", "inspect", container], timeout=30).stdout)[0]

    def logs(self, container: str) -> list[str]:
        out = run(["docker", "logs", container], timeout=60)
        return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]

    def exec(self, container: str, *argv: str) -> str:
        return run(["docker", "exec", container, *argv], timeout=60).stdout
