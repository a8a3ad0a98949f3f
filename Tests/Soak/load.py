"""What the soak does to the agent, each on a thread of its own until ``stop`` is set:

- ``Flapper``: backends go down at random (``takedowns`` a second), each for 1.5-6 s, either silently
  (iptables DROP in the server namespace: probes time out, nothing answers; RSTs still pass so the
  server side of a destroyed connection closes) or refusing (new SYNs answered with an RST, as a dead
  listener's kernel does; established connections stay open and idle).
- ``NamespaceChurn``: every ``every`` s a namespace appears (linked to the server namespace), lives
  4-12 s and is deleted; two of three hold one connection toward a backend of the `netns: all` pool.
  Before a holder closes its connection it waits until nothing can reap it any more (the backend held
  up and seen up by the agent), so every end is one the test knows about.
- ``Reloader``: a SIGHUP every second, the file rewritten each time: good A, bad, good B, bad, ...; each
  answer is checked in the log, in conn_reaper_config_last_reload_successful and in /status.
"""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time

from lab.agent import rewrite_unnoticed
from lab.netns import endpoint
from lab.traffic import PeerError

RELOADED = "configuration reloaded"
NOT_RELOADED = "configuration not reloaded: the running one stays"


class Flapper(threading.Thread):
    def __init__(self, server, backends: list[str], takedowns: float, stop: threading.Event, seed: int | None) -> None:
        super().__init__(name="flapper", daemon=True)
        self.server = server
        self.backends = backends
        self.takedowns = takedowns
        self.stop_event = stop
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.down: dict[str, tuple[str, float]] = {}     # backend -> (mode, until)
        self.up_since = {backend: time.monotonic() for backend in backends}
        self.holds: dict[str, int] = {}
        self.switches = {"drop": 0, "reject": 0, "up": 0}
        self.error: BaseException | None = None

    def _rule(self, verb: str, backend: str, mode: str) -> None:
        spec = (["-p", "tcp", "!", "--tcp-flags", "RST", "RST", "-j", "DROP"] if mode == "drop"
                else ["-p", "tcp", "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"])
        tables = self.server.ip6tables if ":" in backend else self.server.iptables
        tables(verb, "INPUT", "-d", backend, *spec)

    def is_up_for(self, backend: str) -> float:
        """Seconds the backend has been reachable (0 while down)."""
        with self.lock:
            return 0.0 if backend in self.down else time.monotonic() - self.up_since[backend]

    @contextlib.contextmanager
    def held(self, backend: str):
        """While held, the backend is not taken down (it may come back up)."""
        with self.lock:
            self.holds[backend] = self.holds.get(backend, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                self.holds[backend] -= 1

    @contextlib.contextmanager
    def hold_one_up(self, among: list[str]):
        """Picks a backend that is up and holds it (None when all are down), in one step."""
        with self.lock:
            candidates = [b for b in among if b not in self.down]
            backend = self.random.choice(candidates) if candidates else None
            if backend:
                self.holds[backend] = self.holds.get(backend, 0) + 1
        try:
            yield backend
        finally:
            if backend:
                with self.lock:
                    self.holds[backend] -= 1

    def _bring_up(self, backend: str) -> None:
        mode, _ = self.down[backend]
        self._rule("-D", backend, mode)
        with self.lock:
            del self.down[backend]
            self.up_since[backend] = time.monotonic()
        self.switches["up"] += 1

    def run(self) -> None:
        try:
            tick = 0.1
            while not self.stop_event.wait(tick):
                now = time.monotonic()
                for backend, (_, until) in list(self.down.items()):
                    if until <= now:
                        self._bring_up(backend)
                if self.random.random() < self.takedowns * tick:
                    with self.lock:
                        candidates = [b for b in self.backends if b not in self.down and not self.holds.get(b)]
                    if candidates:
                        backend = self.random.choice(candidates)
                        mode = "drop" if self.random.random() < 0.6 else "reject"
                        with self.lock:
                            if self.holds.get(backend):
                                continue
                            self.down[backend] = (mode, now + self.random.uniform(1.5, 6.0))
                        self._rule("-I", backend, mode)
                        self.switches[mode] += 1
        except BaseException as error:  # reported by the soak
            self.error = error

    def restore_all(self) -> None:
        for backend in list(self.down):
            self._bring_up(backend)


class NamespaceChurn(threading.Thread):
    def __init__(self, lab, server, flapper: Flapper, backends: list[str], port: int, agent, pool: str,
                 every: float, stop: threading.Event, seed: int | None) -> None:
        super().__init__(name="namespaces", daemon=True)
        self.lab, self.server, self.flapper = lab, server, flapper
        self.backends, self.port, self.agent, self.pool = backends, port, agent, pool
        self.every = every
        self.stop_event = stop
        self.random = random.Random(seed)
        self.alive: list[dict] = []
        self.made = 0
        self.removed = 0
        self.outcomes: dict[str, dict[str, int]] = {}   # backend -> {how the held connection ended: n}
        self.unsettled: list[str] = []                   # why a holder waited in vain, one line each
        self.error: BaseException | None = None

    def _count(self, backend: str, how: str) -> None:
        entry = self.outcomes.setdefault(backend, {})
        entry[how] = entry.get(how, 0) + 1

    def _create(self) -> None:
        index = self.made
        self.made += 1
        namespace = self.lab.namespace(f"e{index}")
        subnet = 16 + index % 200
        self.lab.link(namespace, self.server, [f"10.242.{subnet}.1/24"], [f"10.242.{subnet}.2/24"],
                      b_dev=f"to-e{index}"[:15])
        namespace.add_route("10.242.3.0/24", via=f"10.242.{subnet}.2")
        entry = {"namespace": namespace, "until": time.monotonic() + self.random.uniform(4, 12)}
        if self.random.random() < 2 / 3:
            holder = namespace.peer()
            with self.flapper.hold_one_up(self.backends) as backend:
                if backend:
                    try:
                        entry["socket"] = holder.connect_one(backend, self.port, timeout=5)
                        entry.update(holder=holder, backend=backend)
                    except PeerError as error:
                        errno = str(error).split(": ")[1].split(":")[0]
                        self._count(backend, f"connect:{'timeout' if errno == '0' else errno}")
        self.alive.append(entry)

    def _agent_state(self, backend: str) -> str:
        try:
            return self.agent.backend_states().get(f"{self.pool}/{endpoint(backend, self.port)}", "absent")
        except (OSError, AssertionError, ValueError) as error:
            return f"unreadable ({error.__class__.__name__})"

    def _remove(self, entry: dict) -> None:
        holder = entry.get("holder")
        if holder:
            backend, ident = entry["backend"], entry["socket"]
            with self.flapper.held(backend):
                started = time.monotonic()
                deadline = started + 30
                seen: list[tuple[float, float, str]] = []   # (t, up for, agent's state) whenever it changes
                while True:
                    state = holder.state([ident])[0]
                    if state != "ok":
                        break
                    up_for = self.flapper.is_up_for(backend)
                    agent_state = self._agent_state(backend)
                    if not seen or seen[-1][2] != agent_state or (seen[-1][1] == 0) != (up_for == 0):
                        seen.append((time.monotonic() - started, up_for, agent_state))
                    if up_for >= 3.0 and agent_state == "up":
                        state = holder.state([ident])[0]
                        break
                    if time.monotonic() > deadline:
                        state = "still-ok-backend-not-up"
                        self.unsettled.append(f"{backend}: " + ", ".join(
                            f"t={t:.1f}s up_for={u:.1f}s agent={a}" for t, u, a in seen[-12:]))
                        break
                    time.sleep(0.2)
                holder.close_sockets([ident])
            self._count(backend, state)
        self.lab.remove(entry["namespace"])
        self.removed += 1

    def run(self) -> None:
        try:
            next_at = time.monotonic()
            while not self.stop_event.wait(0.2):
                now = time.monotonic()
                for entry in [e for e in self.alive if e["until"] <= now]:
                    self.alive.remove(entry)
                    self._remove(entry)
                if now >= next_at:
                    self._create()
                    next_at = now + self.every
        except BaseException as error:  # reported by the soak
            self.error = error

    def remove_all(self) -> None:
        while self.alive:
            self._remove(self.alive.pop())


class Reloader(threading.Thread):
    """good A, bad, good B, bad, ...: ``configs`` is [(name, text, good)], each padded to one size."""

    def __init__(self, agent, log, path: str, configs: list[tuple[str, str, bool]], check_good, stop: threading.Event) -> None:
        super().__init__(name="reloader", daemon=True)
        self.agent, self.log, self.path, self.configs = agent, log, path, configs
        self.check_good = check_good      # (name) -> problem or None: /status shows that configuration
        self.stop_event = stop
        self.sent = {"good": 0, "bad": 0}
        self.problems: list[str] = []
        self.last_good = configs[0][0]
        self.error: BaseException | None = None

    def reload(self, name: str, text: str, good: bool) -> None:
        rewrite_unnoticed(self.path, text)
        signalled = time.monotonic()
        self.agent.signal(signal.SIGHUP)
        self.sent["good" if good else "bad"] += 1
        line = self.log.wait_reload(signalled, timeout=5)
        if line is None:
            self.problems.append(f"{name}: no reload line within 5 s of the SIGHUP")
            return
        if good:
            self.last_good = name
        expected = RELOADED if good else NOT_RELOADED
        if line.msg != expected:
            self.problems.append(f"{name}: {line.text}")
        if not good and "probe.fall" not in line.fields.get("error", ""):
            self.problems.append(f"{name}: the error does not name the bad key: {line.text}")
        gauge = self.agent.metrics().value("conn_reaper_config_last_reload_successful")
        if gauge != (1 if good else 0):
            self.problems.append(f"{name}: conn_reaper_config_last_reload_successful is {gauge}")
        problem = self.check_good(self.last_good)
        if problem:
            self.problems.append(f"after {name}: {problem}")

    def run(self) -> None:
        try:
            turn = 0
            while not self.stop_event.is_set():
                started = time.monotonic()
                self.reload(*self.configs[turn % len(self.configs)])
                turn += 1
                self.stop_event.wait(max(0.0, 1.0 - (time.monotonic() - started)))
        except BaseException as error:  # reported by the soak
            self.error = error

