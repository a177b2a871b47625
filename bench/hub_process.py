"""A real ``edgefleet hub serve`` in its own process, for the benchmarks that measure a fleet
against it (bench/sim.py, bench/rollout.py): keys, an admin token, the hub, example model
versions registered through the CLI, and an enrollment secret for the agents."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

EDGEFLEET = [sys.executable, "-m", "edgefleet.cli"]


@contextmanager
def served_hub(
    work: Path, broker_url: str, port: int, *, model: str, versions: int = 1,
    serve_args: Sequence[str] = (),
) -> Iterator[tuple[str, str]]:  # fmt: skip
    """``hub serve`` in ``work/hub`` with ``versions`` compatible example versions of
    ``model`` registered (seeds 1, 2, ...); yields its URL and an admin token."""
    data = work / "hub"
    cli("keys", "init", "--dir", str(data / "keys"))
    token = cli("hub", "token", "create", "--data", str(data), "--role", "admin", "--name", "b")
    log = (work / "hub.log").open("w")
    serve = [*EDGEFLEET, "--log-level", "WARNING", "hub", "serve", "--data", str(data)]
    serve += ["--broker", broker_url, "--port", str(port), *serve_args]
    hub = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    env = {"EDGEFLEET_HUB_URL": url, "EDGEFLEET_TOKEN": token}
    try:
        deadline = time.monotonic() + 60
        while not answers(url):
            if hub.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not start: {(work / 'hub.log').read_text()}")
            time.sleep(0.3)
        for seed in range(1, versions + 1):
            example = work / f"example-{seed}"
            cli("model", "example", "--out", str(example), "--seed", str(seed))
            cli("model", "register", str(example / "model.onnx"), "--name", model,
                "--reference", str(example / "reference.npz"),
                "--validation", str(example / "validation.npz"), env=env)  # fmt: skip
        yield url, token
    finally:
        hub.terminate()
        hub.wait(30)
        log.close()


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """One ``edgefleet`` command; its output. Raises RuntimeError when it fails."""
    done = subprocess.run(
        [*EDGEFLEET, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"edgefleet {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout.strip()


def enroll_secret(hub_url: str, token: str) -> str:
    """A fleet enrollment token's secret, valid for a day."""
    response = httpx.post(
        f"{hub_url}/api/v1/enrollment-tokens",
        json={"kind": "fleet", "expires_in_s": 24 * 3600},
        headers={"Authorization": f"Bearer {token}"},
    )
    response.raise_for_status()
    secret: str = response.json()["token"]
    return secret
