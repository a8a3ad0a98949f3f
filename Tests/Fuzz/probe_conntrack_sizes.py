#!/usr/bin/env python3
"""Which attribute sizes make the installed libnetfilter_conntrack end the process (its 'kernel ABI
is broken' exit) when it parses a CT_NEW message: each case in a forked child. Prints, per
attribute path, the sizes the library lets through; Sources/Conntrack/ConntrackAttributeCheck.swift
must refuse every other one. Run it after a library upgrade (about 20 s).

Usage: probe_conntrack_sizes.py"""

import ctypes
import functools
import os
import struct

LIBRARY = ctypes.CDLL("libnetfilter_conntrack.so.3")
LIBRARY.nfct_new.restype = ctypes.c_void_p
LIBRARY.nfct_nlmsg_parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
SIZES = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17]


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


def fatal(payload: bytes) -> bool:
    message = struct.pack("=IHHII", 20 + len(payload), 0x100, 2, 1, 0) + b"\x02\0\0\0" + payload
    child = os.fork()
    if child == 0:
        os.close(2)
        LIBRARY.nfct_nlmsg_parse(message, LIBRARY.nfct_new())
        os._exit(0)
    return os.waitpid(child, 0)[1] != 0


def allowed(path: tuple[int, ...]) -> dict[int, list[int]]:
    """For each attribute type under `path` that the library checks: the sizes it accepts."""
    wrap = lambda inner: functools.reduce(lambda acc, kind: attribute(kind, acc), reversed(path), inner)
    found = {}
    for kind in range(1, 31 if not path else 16):
        refused = [size for size in SIZES if fatal(wrap(attribute(kind, b"\x01" * size)))]
        if refused:
            found[kind] = [size for size in SIZES if size not in refused]
    return found


def main() -> None:
    top = allowed(())
    print("top level:", top)
    containers = [kind for kind in range(1, 31) if kind not in top or 0 in top[kind]]
    for container in containers:
        inner = allowed((container,))
        if inner:
            print(f"inside {container}:", inner)
    for tuple_kind in (1, 2, 14):
        for inner in (1, 2):
            print(f"inside {tuple_kind}/{inner}:", allowed((tuple_kind, inner)))
    for inner in (1, 2, 3):
        print(f"inside 4/{inner}:", allowed((4, inner)))


if __name__ == "__main__":
    main()
