"""The nginx parser against nginx's own reading, on generated configurations (kernel-free).

Each case is a random nginx.conf with upstream blocks in http{} and stream{}, servers with
weight/max_fails/fail_timeout/max_conns/backup/down, IPv4, IPv6, host names and unix sockets,
includes by glob and by name, comments, quoting and odd whitespace. For every case:
  - nginx itself (`nginx -t`) accepts it, so the generator writes what nginx reads;
  - crossplane (a parser that follows nginx's tokenizer) finds these upstream servers;
  - `conn-reaper upstreams -o json` finds the same ones (unix sockets left out: no peer to reap).
Seeded (NGINX_DIFF_SEED, NGINX_DIFF_CASES change it), so a failure names the case that reproduces."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, UNDER_CI

CASES = int(os.environ.get("NGINX_DIFF_CASES", "300"))
SEED = int(os.environ.get("NGINX_DIFF_SEED", "15"))
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def missing(reason: str) -> None:
    if UNDER_CI:
        pytest.fail(f"{reason} (CI=true: this test must run)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tools():
    crossplane = pytest.importorskip("crossplane") if not UNDER_CI else __import__("crossplane")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK) or not os.path.exists(STREAM_MODULE):
        missing("nginx with the stream module is not installed (make deps installs it)")
    binary = os.environ.get("CONN_REAPER") or str(REPO / ".build" / "debug" / "conn-reaper")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"conn-reaper binary not found at {binary}: build it or set CONN_REAPER", pytrace=False)
    return crossplane, nginx, binary


class Generator:
    """One random configuration: files in a folder, and the upstream servers it means."""

    def __init__(self, rng: random.Random, folder: Path):
        self.rng = rng
        self.folder = folder
        self.expected: list[tuple[str, str, list[tuple[str, bool, bool]]]] = []
        self.names: set[str] = set()

    def space(self) -> str:
        return self.rng.choice([" ", " ", "  ", "\t", "\n    ", " \n\t "])

    def comment(self) -> str:
        return self.rng.choice(["", "", "", "  # a comment", " #; { } \" '", "\n# server 10.9.9.9:1;\n"])

    def word(self, text: str) -> str:
        quote = self.rng.choice(["", "", "", '"', "'"])
        return f"{quote}{text}{quote}"

    def address(self, context: str) -> tuple[str, bool]:
        """The server's address as written, and whether conn-reaper keeps it (unix sockets: no)."""
        kind = self.rng.choice(["v4", "v4", "v4", "v6", "host", "unix", "v4-bare", "v6-bare"])
        port = self.rng.randint(1, 65535)
        if kind in ("v4-bare", "v6-bare") and context == "stream":
            kind = kind[:2]
        return {
            "v4": (f"10.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}:{port}", True),
            "v4-bare": (f"192.168.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}", True),
            "v6": (f"[fd00::{self.rng.randint(1, 0xffff):x}]:{port}", True),
            "v6-bare": (f"[fd00:1::{self.rng.randint(1, 0xffff):x}]", True),
            "host": (f"localhost:{port}", True),
            "unix": (f"unix:/run/app-{self.rng.randint(0, 99)}.sock", False),
        }[kind]

    def upstream(self, context: str) -> tuple[str, tuple]:
        """An upstream block's text, and what it means: (context, name, [(address, down, backup)])."""
        name = f"{context}_{self.rng.choice(['api', 'web', 'db', 'kube_apiserver'])}_{len(self.names)}"
        self.names.add(name)
        balancer = self.rng.choice(["", "", "least_conn;", f"zone zone_{name} 64k;"])
        lines, servers = [], []
        for index in range(self.rng.randint(1, 6)):
            address, kept = self.address(context)
            # nginx wants one server that is not a backup.
            choices = ["weight=3", "max_fails=2", "fail_timeout=10s", "max_conns=100", "down"] + (["backup"] if index else [])
            flags = self.rng.sample(choices, self.rng.randint(0, 3))
            arguments = [self.word(address)] + [self.word(flag) for flag in flags]
            lines.append(f"server{self.space()}{self.space().join(arguments)};{self.comment()}")
            if kept:
                servers.append((address, "down" in flags, "backup" in flags))
        if balancer:
            lines.insert(self.rng.randint(0, len(lines)), balancer)
        opening = self.rng.choice([f"upstream {self.word(name)} {{", f"upstream\t{name}\n{{"])
        return opening + "\n    " + "\n    ".join(lines) + "\n}\n", (context, name, servers)

    def context_body(self, context: str) -> str:
        """The context's upstreams, some directly, some from files included by name or by a glob
        (whose files nginx reads in name order, where the include line stands)."""
        parts: list[tuple[str, list]] = []
        glob_part = None
        for index in range(self.rng.randint(0, 3)):
            how = self.rng.choice(["inline", "inline", "glob", "named"])
            text, meaning = self.upstream(context)
            if how == "inline":
                parts.append((text, [meaning]))
                continue
            directory = self.folder / f"{context}.{how}"
            directory.mkdir(exist_ok=True)
            (directory / f"{index:02d}.conf").write_text(f"# included into {context}\n{text}")
            if how == "named":
                parts.append((f"include {self.word(f'{context}.named/{index:02d}.conf')};{self.comment()}\n", [meaning]))
            elif glob_part is None:
                glob_part = (f"include {context}.glob/*.conf;\n", [meaning])
                parts.append(glob_part)
            else:
                glob_part[1].append(meaning)
        # Blocks named `server` outside upstream{} must not read as upstream servers.
        if context == "http" and self.rng.random() < 0.5:
            parts.append(("server { listen 127.0.0.1:18080; location / { return 204; } }\n", []))
        if context == "stream" and self.rng.random() < 0.5:
            parts.append(("server { listen 127.0.0.1:16443; return 'ok'; }\n", []))
        for _, meanings in parts:
            self.expected += meanings
        return "".join(text for text, _ in parts)

    def write(self) -> Path:
        main = (
            f"load_module {STREAM_MODULE};{self.comment()}\n"
            f"pid {self.folder}/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 64; }}\n"
        )
        for context in self.rng.sample(["http", "stream"], 2):
            main += f"{context} {{{self.comment()}\n{self.context_body(context)}}}\n"
        path = self.folder / "nginx.conf"
        path.write_text(main)
        return path


def crossplane_servers(crossplane, path: Path) -> list:
    payload = crossplane.parse(str(path), catch_errors=False, comments=False)
    by_file = {config["file"]: config["parsed"] for config in payload["config"]}
    found = []

    def walk(directives, context):
        for directive in directives:
            name = directive["directive"]
            if name == "include":
                for included in directive.get("includes", []):
                    walk(payload["config"][included]["parsed"], context)
            elif name in ("http", "stream"):
                walk(directive.get("block", []), name)
            elif name == "upstream":
                servers = [(child["args"][0], "down" in child["args"][1:], "backup" in child["args"][1:])
                           for child in directive.get("block", []) if child["directive"] == "server"
                           and not child["args"][0].startswith("unix:")]
                found.append((context, directive["args"][0], servers))
    walk(by_file[str(path)], None)
    return found


def test_upstream_servers_match_nginx_reading(tools):
    crossplane, nginx, binary = tools
    rng = random.Random(SEED)
    servers_compared = 0
    for case in range(CASES):
        folder = Path(tempfile.mkdtemp(prefix="conn-reaper-nginx-diff-"))
        try:
            generator = Generator(rng, folder)
            path = generator.write()
            accepted = subprocess.run([nginx, "-t", "-q", "-c", str(path), "-p", str(folder), "-e", "/dev/null"],
                                      capture_output=True, text=True)
            assert accepted.returncode == 0, f"case {case}: nginx refuses the generated file: {accepted.stderr}\n{path.read_text()}"
            theirs = crossplane_servers(crossplane, path)
            assert theirs == [(c, n, s) for c, n, s in generator.expected], f"case {case}: crossplane disagrees with the generator"
            result = subprocess.run([binary, "upstreams", "-o", "json", str(path)], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"case {case}: conn-reaper refuses what nginx accepts: {result.stderr}\n{path.read_text()}"
            ours = [(upstream["context"], upstream["name"],
                     [(server["address"], server["down"], server["backup"]) for server in upstream["servers"]])
                    for upstream in json.loads(result.stdout)]
            assert ours == theirs, f"case {case}: conn-reaper reads other upstream servers than nginx\n{path.read_text()}"
            servers_compared += sum(len(servers) for _, _, servers in ours)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"nginx differential: {CASES} cases (seed {SEED}), {servers_compared} upstream servers compared")
    assert servers_compared > CASES, f"only {servers_compared} servers compared in {CASES} cases: the generator is too thin"
