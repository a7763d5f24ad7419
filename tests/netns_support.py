"""A private network of Linux network namespaces, made and removed by a test: "hosts" joined by a switch.

    root namespace (the test, the producer)  ── veth ──┐
    namespace <tag>-hub: bridge "sw0" = x.x.x.1/24      ├─ the switch (and the Redis host: it listens on .1)
    namespace <tag>-<host> (one per worker host) ─ veth ┘

Each host's cable is a veth pair: one end "eth0" in the host's namespace, the other a port of the bridge in
the hub namespace. `cut(host)` sets the switch's port of that cable down, as if it were pulled at the switch:
packets to and from the host are dropped silently (no reset, no error; the host's own interface stays up),
which is what a real partition looks like to TCP. `restore(host)` sets it up again.

The /24 is picked in 10.231.0.0/16 among those that no route or address of the root namespace touches, and
nothing outside it is ever contacted. `PrivateNetwork.unavailable()` says why namespaces cannot be made here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import subprocess
import time
import uuid


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace routes (all tables) or holds an address in."""
    words = []
    for line in _ip("-4", "route", "show", "table", "all").stdout.splitlines():
        parts = line.split()  # "10.0.0.0/8 via ...", "local 10.0.0.1 dev ...", "default via ..."
        if parts and parts[0] in (
            "local",
            "broadcast",
            "unreachable",
            "blackhole",
            "prohibit",
            "throw",
            "multicast",
            "anycast",
            "unicast",
            "nat",
        ):
            parts = parts[1:]
        if parts and parts[0] != "default":
            words.append(parts[0])
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        parts = line.split()  # "4: eth0    inet 192.0.2.2/24 brd ..."
        if "inet" in parts:
            words.append(parts[parts.index("inet") + 1])
    networks = []
    for word in words:
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            pass
    return networks


def free_subnet(prefix: str = "10.231.0.0/16") -> ipaddress.IPv4Network:
    used = used_networks()
    candidates = list(ipaddress.ip_network(prefix).subnets(new_prefix=24))
    random.shuffle(candidates)  # two runs at once should not both reach for the first free one
    for subnet in candidates:
        if not any(subnet.overlaps(network) for network in used):
            return subnet
    raise NetworkError(f"no free /24 in {prefix}")


class PrivateNetwork:
    def __init__(self, hosts: list[str]):
        self.tag = "lmp" + uuid.uuid4().hex[:6]  # unique per run: namespaces and interface names
        self.hosts = list(hosts)
        self.hub = f"{self.tag}-hub"
        self.subnet: ipaddress.IPv4Network | None = None
        self._namespaces: list[str] = []
        self._root_link = f"{self.tag}r"  # the root namespace's end of its cable (<= 15 characters)

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot run the test's namespaces (None if it can, as far as one can tell)."""
        if shutil.which("ip") is None:
            return "iproute2 (`ip`) is not installed"
        if os.geteuid() != 0:
            return "creating network namespaces needs root"
        probe = f"lmpprobe{uuid.uuid4().hex[:6]}"
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` fails here: {made.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return None

    # topology -------------------------------------------------------------------------------------------
    def create(self) -> None:
        self.subnet = free_subnet()
        self._namespace(self.hub)
        _ip("link", "add", "sw0", "type", "bridge", "forward_delay", "0", netns=self.hub)
        _ip("addr", "add", f"{self.address('hub')}/24", "dev", "sw0", netns=self.hub)
        _ip("link", "set", "sw0", "up", netns=self.hub)
        # the root namespace's cable: its end stays here, the other becomes a switch port
        _ip("link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", self.hub)
        self._plug("root")
        _ip("addr", "add", f"{self.address('root')}/24", "dev", self._root_link)
        _ip("link", "set", self._root_link, "up")
        for host in self.hosts:
            namespace = self.namespace(host)
            self._namespace(namespace)
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                namespace,
                "type",
                "veth",
                "peer",
                "name",
                self.switch_port(host),
                "netns",
                self.hub,
            )
            self._plug(self.switch_port(host))
            _ip("addr", "add", f"{self.address(host)}/24", "dev", "eth0", netns=namespace)
            _ip("link", "set", "eth0", "up", netns=namespace)

    def _namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("link", "set", "lo", "up", netns=name)

    def _plug(self, port: str) -> None:
        _ip("link", "set", port, "master", "sw0", netns=self.hub)
        _ip("link", "set", port, "up", netns=self.hub)

    def switch_port(self, host: str) -> str:
        """The switch's end of the host's cable (a link in the hub namespace)."""
        return f"p{self.hosts.index(host)}"

    def address(self, host: str) -> str:
        """hub .1, root .2, the worker hosts .10, .11, ..."""
        assert self.subnet is not None, "create() first"
        offset = {"hub": 1, "root": 2}.get(host)
        if offset is None:
            offset = 10 + self.hosts.index(host)
        return str(self.subnet.network_address + offset)

    def namespace(self, host: str) -> str:
        return self.hub if host == "hub" else f"{self.tag}-{host}"

    def prefix(self, host: str) -> tuple[str, ...]:
        """A command prefix that runs a program on that host (`ip netns exec` execs it: same pid)."""
        return ("ip", "netns", "exec", self.namespace(host))

    # faults -----------------------------------------------------------------------------------------------
    def cut(self, host: str) -> None:
        _ip("link", "set", self.switch_port(host), "down", netns=self.hub)

    def restore(self, host: str, timeout: float = 10.0) -> None:
        """Plug the cable back in; returns once the switch port is up again (the kernel raises it a moment later)."""
        _ip("link", "set", self.switch_port(host), "up", netns=self.hub)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            (link,) = json.loads(_ip("-j", "link", "show", self.switch_port(host), netns=self.hub).stdout)
            if link.get("operstate") == "UP":
                return
            time.sleep(0.05)
        raise NetworkError(f"the switch port of {host} did not come up within {timeout} s")

    def reachable(self, host: str, address: str, port: int, timeout: float = 10.0) -> bool:
        """Whether a TCP connection from `host` to address:port opens within `timeout` seconds, trying again every
        0.2 s (just after a restore the host may first have to resolve the address again)."""
        probe = (
            "import socket,sys,time\n"
            f"deadline = time.monotonic() + {timeout}\n"
            "while True:\n"
            "    left = deadline - time.monotonic()\n"
            "    if left <= 0: sys.exit(1)\n"
            f"    try: socket.create_connection(({address!r}, {port}), min(1.0, left)).close(); sys.exit(0)\n"
            "    except OSError: time.sleep(0.2)\n"
        )
        done = subprocess.run([*self.prefix(host), "python3", "-c", probe], capture_output=True, timeout=timeout + 20)
        return done.returncode == 0

    # teardown ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Remove the namespaces (their interfaces go with them) and the root namespace's end of its cable.
        Stop the processes running in them first: a namespace lives on while a process is inside."""
        for namespace in reversed(self._namespaces):
            _ip("netns", "del", namespace, check=False)
        self._namespaces.clear()
        _ip("link", "del", self._root_link, check=False)
