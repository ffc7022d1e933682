"""Grid members as real box processes, each in its own network namespace when it can be.

With root, `Network` makes one namespace per box and joins them with veth pairs to a
bridge in a hub namespace of its own, so grid traffic stays inside them (10.77.0.0/24, one
address per box). Without it, the boxes listen on loopback with CURVE forced on. Either
way the test output says which mode ran; the tests never skip for want of namespaces.
The test process drives each box through its data dir's ipc socket (a file: reachable
from every namespace); only box-to-box traffic crosses the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import zmq.auth
from fixtures_box import BoxProcess

from aether_box.bus.scopes import ADMIN
from aether_box.bus.security import authorize_key, init_keys, keys_dir

__all__ = ["GridBox", "Network", "admit", "public_key"]

SUBNET = "10.77.0"
MODE_ENV = "AETHER_BOX_GRID_TEST_MODE"  # "loopback": skip the namespaces even as root


class Network:
    """Namespaces joined by veth pairs to a hub bridge, or loopback: see the module."""

    def __init__(self, size: int) -> None:
        self.tag = f"abx{os.getpid() % 100000}"
        self.names = [f"{self.tag}-{i}" for i in range(1, size + 1)]
        self.hub = f"{self.tag}-hub"
        self.mode = "loopback"
        self.why = ""
        if os.environ.get(MODE_ENV) == "loopback":
            self.why = f"{MODE_ENV}=loopback"
        elif shutil.which("ip") is None:
            self.why = "no `ip` command"
        elif os.geteuid() != 0:
            self.why = "not root"
        else:
            try:
                self._make()
                self.mode = "netns"
            except subprocess.CalledProcessError as exc:
                self.why = f"`{' '.join(exc.cmd)}` failed: {exc.stderr.strip()}"
                self.close()

    def describe(self) -> str:
        if self.mode == "netns":
            return f"grid tests: network namespaces {', '.join(self.names)} (veth, {SUBNET}.0/24)"
        return f"grid tests: loopback with CURVE forced on (no namespaces: {self.why})"

    def address(self, i: int) -> str:
        """Box i's address (1-based)."""
        return f"{SUBNET}.{i}" if self.mode == "netns" else "127.0.0.1"

    def prefix(self, i: int) -> tuple[str, ...]:
        """What runs a command inside box i's namespace."""
        return ("ip", "netns", "exec", self.names[i - 1]) if self.mode == "netns" else ()

    def _make(self) -> None:
        run = _ip
        run("netns", "add", self.hub)
        run("-n", self.hub, "link", "add", "br0", "type", "bridge")
        run("-n", self.hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.names, 1):
            run("netns", "add", ns)
            run("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "eth0", "netns", ns)
            run("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            run("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", "eth0")
            run("-n", ns, "link", "set", "eth0", "up")
            run("-n", ns, "link", "set", "lo", "up")

    def close(self) -> None:
        if shutil.which("ip") is None:  # loopback mode on a machine without iproute2
            return
        for ns in [*self.names, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class GridBox:
    """One member: a data dir with CURVE keys, and its box process (restartable)."""

    def __init__(self, network: Network, i: int, name: str, models: Path, *extra: str) -> None:
        self.network, self.i, self.name, self.models = network, i, name, models
        self.extra = extra
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"abx-{name}-"))
        init_keys(self.data_dir)
        self.port = "7745" if network.mode == "netns" else "*"
        self.process: BoxProcess | None = None

    @property
    def key_file(self) -> Path:
        return keys_dir(self.data_dir) / "server.key"

    def start(self) -> GridBox:
        address = self.network.address(self.i)
        self.process = BoxProcess(
            self.data_dir,
            "--set",
            f'bus.endpoints=["ipc://{{data_dir}}/bus.sock", "tcp://{address}:{self.port}"]',
            "--set",
            "bus.curve=on",
            "--set",
            f"grid.name={self.name}",
            "--set",
            f"models.dir={self.models}",
            "--set",
            'http.address=""',  # no HTTP gateway: the grid is on the bus
            # One llama.cpp thread per box: on a shared machine, more spin against each other.
            "--set",
            "engines.n_threads=1",
            "--set",
            "engines.n_ctx=512",
            "--set",
            "engines.parallel=2",
            *self.extra,
            prefix=self.network.prefix(self.i),
        )
        return self

    def client(self, **kwargs):
        assert self.process is not None
        return self.process.client(**kwargs)

    def grid(self, **kwargs) -> dict:
        with self.client(timeout=10) as client:
            return client.request("grid", {"op": "status"})

    def members(self) -> dict[str, dict]:
        return {m["name"]: m for m in self.grid()["members"]}

    def kill(self) -> None:
        assert self.process is not None
        self.process.process.kill()
        self.process.process.wait()
        self.process.log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.process.poll() is None:
            self.process.stop()

    def remove(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def public_key(box: GridBox) -> str:
    return zmq.auth.load_certificate(box.key_file)[0].decode()


def admit(host: GridBox, guest: GridBox) -> None:
    """The step a person does once: `aether-box keys authorize GUEST.key --scope admin` on
    the host, with the guest's keys/server.key."""
    authorize_key(host.data_dir, guest.key_file, ADMIN, guest.name)
