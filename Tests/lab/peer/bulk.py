"""The ``bulk-server``, ``bulk-client`` and ``bulk-backends`` roles of the traffic peer: thousands of
idle TCP connections, for the benchmarks (lab.bench drives them).

Outside a request a bulk peer does nothing, so it takes no CPU while a benchmark times a purge. A
process may hold only RLIMIT_NOFILE descriptors (20,000 here, and no CAP_SYS_RESOURCE to raise the
hard limit), so a benchmark runs several per side:
  bulk-client    connect / reap / abort / check / close_all / sample: non-blocking connects in batches;
                 `reap` closes the sockets that were destroyed (SOCK_DESTROY or `ss -K` leave them in
                 error); `check` counts per destination the live ones and how the others ended;
                 `sample` times connects to one destination until `stop` arrives.
  bulk-server    listen (SO_REUSEPORT, so all server peers share each port) / serve / drain / reap:
                 `serve` accepts until `stop` arrives; `reap` closes the sockets the peer reset.
  bulk-backends  ADDRS PORT: a pool's backends; accepts all the time and keeps each connection until
                 its peer closes it (probes come and go, held connections stay); `close_ip` resets
                 the connections to one address.

Each exits when stdin closes or when the parent dies (PR_SET_PDEATHSIG), so a benchmark that is
killed leaves no peer behind.
"""

import ctypes
import errno
import json
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import time

from lab.peer.protocol import errno_name, event, greet, respond

PR_SET_PDEATHSIG = 1
DEAD = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLIN
LINGER_ABORT = struct.pack("ii", 1, 0)  # close() sends RST: no FIN, no TIME_WAIT left behind
RESERVED_FDS = 64

def close_socket(sock, abort=True):
    """Closes a socket; with ``abort``, by an RST (SO_LINGER 0): no FIN exchange, no TIME_WAIT left."""
    if abort:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        except OSError:
            pass
    sock.close()


def die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent was gone before prctl took effect
        sys.exit(1)


def raise_nofile():
    """Soft limit up to the hard limit (raising the hard one needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (hard, 1 << 20):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LineReader:
    """Unbuffered line reads from a descriptor, so epoll on it never misses a buffered line."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""

    def has_line(self):
        return b"\n" in self.buffer

    def readline(self):
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line.decode()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode() + "\n"

    def expect_stop(self):
        """Reads the `stop` request that ends a request running until it; exits at the end of input."""
        line = self.readline()
        if not line:
            sys.exit(0)
        if json.loads(line).get("op") != "stop":
            raise RuntimeError(f"expected stop, got {line!r}")


def readable_now(sock):
    """poll, not select: a holder's descriptors run far past select's 1024."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class Holder:
    def __init__(self, capacity):
        self.capacity = capacity
        self.ep = select.epoll()  # held connections; polled only in commands
        self.conns = {}  # fd -> (socket object or None, key)
        self.live = {}  # key -> count

    def _add(self, fd, sock, key):
        self.conns[fd] = (sock, key)
        self.live[key] = self.live.get(key, 0) + 1
        self.ep.register(fd, DEAD)

    def _close(self, fd, abort=False):
        sock, key = self.conns.pop(fd)
        self.live[key] -= 1
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        if sock is None:
            sock = socket.socket(fileno=fd)
        close_socket(sock, abort)

    def counts(self):
        return {k: v for k, v in self.live.items() if v}

    def op_reap(self, request):
        """Close every held connection that is in error, reset or half-closed."""
        deadline = time.monotonic() + request.get("settle", 0.0)
        closed = 0
        while True:
            events = self.ep.poll(0, 8192)
            for fd, _ in events:
                if fd in self.conns:
                    self._close(fd)
                    closed += 1
            if not events:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
        return {"closed": closed, "live": self.counts()}

    def op_abort(self, request):
        """Close every connection of one key (all without one) with RST (cleanup after a run that left
        them alive)."""
        key = request.get("key")
        fds = [fd for fd, (_, k) in self.conns.items() if key is None or k == key]
        for fd in fds:
            self._close(fd, abort=True)
        return {"closed": len(fds), "live": self.counts()}


class Server(Holder):
    def __init__(self, capacity, stdin):
        super().__init__(capacity)
        self.listeners = {}  # fd -> (socket, key)
        self.stdin = stdin

    def op_listen(self, request):
        ip, port = request["ip"], request["port"]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((ip, port))
        s.listen(1 << 20)  # capped by net.core.somaxconn of the server namespace
        s.setblocking(False)
        self.listeners[s.fileno()] = (s, f"{ip}:{port}")
        return {"listening": f"{ip}:{port}"}

    def _accept_all(self, fd):
        lsock, key = self.listeners[fd]
        accepted = 0
        while len(self.conns) < self.capacity:
            try:
                cfd, _ = lsock._accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            self._add(cfd, None, key)
            accepted += 1
        return accepted

    def op_serve(self, request):
        """Accept on every listener until a `stop` request arrives on stdin; then drain and answer."""
        event("serving")
        control = select.epoll()
        control.register(self.stdin.fd, select.EPOLLIN)
        for fd in self.listeners:
            control.register(fd, select.EPOLLIN)
        accepted = 0
        full = False
        try:
            while not self.stdin.has_line():
                stop = False
                for fd, _ in control.poll(1.0):
                    if fd == self.stdin.fd:
                        stop = True
                    elif fd in self.listeners:
                        accepted += self._accept_all(fd)
                        if len(self.conns) >= self.capacity and not full:
                            full = True  # leave the rest queued: the totals will show it
                            for lfd in self.listeners:
                                control.unregister(lfd)
                if stop:
                    break
        finally:
            control.close()
        self.stdin.expect_stop()
        if not full:
            for fd in self.listeners:
                accepted += self._accept_all(fd)
        return {"accepted": accepted, "full": full, "live": self.counts()}

    def op_drain(self, request):
        """Accept what is still queued (a late final ACK) without serving."""
        accepted = sum(self._accept_all(fd) for fd in self.listeners)
        return {"accepted": accepted, "live": self.counts()}


class Client(Holder):
    def __init__(self, capacity, stdin):
        super().__init__(capacity)
        self.stdin = stdin

    def op_connect(self, request):
        dst, port, n = request["dst"], request["port"], request["n"]
        batch, timeout = request.get("batch", 1024), request.get("timeout", 120.0)
        key = f"{dst}:{port}"
        if len(self.conns) + n > self.capacity:
            raise RuntimeError(f"{n} more connections exceed this holder's capacity {self.capacity}")
        ok = failed = 0
        errors = {}

        def fail(name):
            nonlocal failed
            failed += 1
            errors[name] = errors.get(name, 0) + 1

        started = time.monotonic()
        deadline = started + timeout
        addr = (dst, port)
        remaining = n
        while remaining > 0 and time.monotonic() < deadline:
            pending = {}
            count = min(batch, remaining)
            remaining -= count
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                rc = s.connect_ex(addr)
                if rc not in (0, errno.EINPROGRESS):
                    fail(errno.errorcode.get(rc, str(rc)))
                    s.close()
                    continue
                pending[s.fileno()] = s
                self.ep.register(s.fileno(), DEAD | select.EPOLLOUT)
            while pending and time.monotonic() < deadline:
                for fd, ev in self.ep.poll(1.0, 8192):
                    s = pending.pop(fd, None)
                    if s is None:
                        if fd in self.conns:
                            self._close(fd)  # an older connection died meanwhile
                        continue
                    if ev & DEAD:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        fail(errno.errorcode.get(err, str(err)) if err else "closed")
                        self.ep.unregister(fd)
                        s.close()
                    else:
                        self.ep.modify(fd, DEAD)
                        self.conns[fd] = (s, key)
                        self.live[key] = self.live.get(key, 0) + 1
                        ok += 1
            for fd, s in pending.items():
                self.ep.unregister(fd)
                s.close()
                fail("timeout")
        if remaining:
            errors["timeout"] = errors.get("timeout", 0) + remaining
            failed += remaining
        return {"connected": ok, "failed": failed, "errors": errors,
                "seconds": round(time.monotonic() - started, 3), "live": self.counts()}


    def op_check(self, request):
        """Per destination: connections still healthy, and how the ended ones ended."""
        result = {}
        for fd, (s, key) in self.conns.items():
            if s is None:
                s = socket.socket(fileno=os.dup(fd))
                owned = True
            else:
                owned = False
            entry = result.setdefault(key, {"alive": 0, "ended": {}})
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0 and readable_now(s):
                # An ended socket whose error was already read shows up as readable EOF.
                try:
                    err = 0 if s.recv(1, socket.MSG_PEEK) else -1
                except OSError as error:
                    err = error.errno
            if owned:
                s.close()
            if err == 0:
                entry["alive"] += 1
            else:
                name = "EOF" if err == -1 else errno_name(err)
                entry["ended"][name] = entry["ended"].get(name, 0) + 1
        return {"keys": result}

    def op_sample(self, request):
        """Until `stop` arrives: connect() to dst:port, time until it fails (or `timeout`), then wait a
        random gap."""
        dst, port, timeout = request["dst"], request["port"], request["timeout"]
        gap_min, gap_max = request.get("gap_min", 0.3), request.get("gap_max", 0.7)
        event("sampling")
        samples = []
        while not self.stdin.has_line():
            if select.select([self.stdin.fd], [], [], random.uniform(gap_min, gap_max))[0]:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            started = time.monotonic()
            rc = s.connect_ex((dst, port))
            if rc == errno.EINPROGRESS:
                poller = select.poll()
                poller.register(s.fileno(), select.POLLOUT | select.POLLERR | select.POLLHUP)
                events = poller.poll(timeout * 1000)
                ended = time.monotonic()
                if events:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    result, ms = (errno_name(err) if err else "connected"), (ended - started) * 1000
                else:
                    result, ms = "timeout", None
            else:
                result, ms = (errno_name(rc) if rc else "connected"), (time.monotonic() - started) * 1000
            close_socket(s)
            samples.append({"t": started, "ms": ms, "result": result})
        self.stdin.expect_stop()
        return {"samples": samples}


class Backends:
    """A pool's backends: accepts on every ADDR:PORT all the time, keeps each connection until its peer
    closes it, and answers requests in between."""

    def __init__(self, stdin, ips, port):
        self.stdin = stdin
        self.ep = select.epoll()
        self.listeners, self.conns = {}, {}  # fd -> socket; fd -> (socket, local ip)
        for ip in ips:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            s.listen(4096)
            s.setblocking(False)
            self.listeners[s.fileno()] = s
            self.ep.register(s.fileno(), select.EPOLLIN)
        self.ep.register(stdin.fd, select.EPOLLIN)

    def _close(self, fd, abort=False):
        sock, _ = self.conns.pop(fd)
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        close_socket(sock, abort)

    def op_close_ip(self, request):
        doomed = [fd for fd, (_, ip) in self.conns.items() if ip == request["ip"]]
        for fd in doomed:
            self._close(fd, abort=True)
        return {"closed": len(doomed), "held": len(self.conns)}

    def run(self):
        while True:
            events = [(self.stdin.fd, select.EPOLLIN)] if self.stdin.has_line() else self.ep.poll(1.0)
            for fd, _ in events:
                if fd == self.stdin.fd:
                    line = self.stdin.readline()
                    if not line or not respond(self, line):
                        return
                elif fd in self.listeners:
                    while True:
                        try:
                            sock, _ = self.listeners[fd].accept()
                        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                            break
                        sock.setblocking(False)
                        self.conns[sock.fileno()] = (sock, sock.getsockname()[0])
                        self.ep.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
                elif fd in self.conns:
                    try:
                        data = self.conns[fd][0].recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        self._close(fd)


def main(role, args):
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark handles Ctrl-C and closes our stdin
    capacity = raise_nofile() - RESERVED_FDS
    stdin = LineReader(sys.stdin.fileno())
    if role == "bulk-backends":
        backends = Backends(stdin, args[0].split(","), int(args[1]))
        greet(role)
        backends.run()
        return 0
    holder = Server(capacity, stdin) if role == "bulk-server" else Client(capacity, stdin)
    greet(role, capacity=capacity)
    while True:
        line = stdin.readline()
        if not line or not respond(holder, line):
            return 0
