#!/usr/bin/env python3
"""The kernel matrix (`make kernels`): boots each declared Debian kernel under qemu and runs the kernel
tests (pytest, Tests/Integration) inside it with the binary built on the host.

Per kernel: the cloud kernel package from the Debian mirror (fetch-kernels.sh, cached under the build
folder); an initramfs of busybox-static, init.sh and the guest kernel's own modules needed to reach the
host (virtio_pci, virtiofs, overlay); the host's root shared read-only by virtiofsd (a read-only bind
mount in a private mount namespace) and a results folder shared read-write; qemu under KVM where it
boots the kernel, under TCG (`-accel tcg,thread=multi -cpu max`, mitigations=off) otherwise. Inside,
CONN_REAPER_EMULATED=1 under TCG: the lab then reports timing bounds about this host's speed instead of
failing them. Prints one summary row per kernel (passed/failed/skipped, pytest time, VM wall time) and
the skip reasons. Every VM and virtiofsd it starts is ended on exit, error or signal.

Usage: run_kernels.py [--kernels deb11,deb12,deb13] [--binary PATH] [-- PYTEST ARGS...]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

#: The declared matrix: name -> (Debian suite, what users run it as).
MATRIX = {
    "deb11": ("bullseye", "Debian 11"),
    "deb12": ("bookworm", "Debian 12"),
    "deb13": ("trixie", "Debian 13"),
}
BOOT_MODULES = ("virtio_pci", "virtiofs", "overlay")
KVM_PROBE_SECONDS = 45   # a stock kernel that hangs under a paravirtual /dev/kvm prints nothing

children: list[subprocess.Popen] = []


def log(message: str) -> None:
    print(f"kernels: {message}", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def end_children() -> None:
    """Ends every process group this run started (qemu, virtiofsd), by its own id."""
    for child in children:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
    children.clear()


def spawn(argv: list[str], **options) -> subprocess.Popen:
    child = subprocess.Popen(["nice", "-n", os.environ.get("KERNELS_NICE", "10")] + argv,
                             start_new_session=True, **options)
    children.append(child)
    return child


def find_virtiofsd() -> str:
    for candidate in ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd", shutil.which("virtiofsd") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("kernels: no virtiofsd (make kernels-deps installs it)")


def build_initramfs(cache: Path, name: str, kver: str) -> Path:
    """busybox-static, init.sh as /init, /dev/console, and the boot modules (decompressed) in load order."""
    target = cache / name / "initramfs.cpio.gz"
    sources = [HERE / "init.sh", Path("/bin/busybox")]
    if target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources):
        return target
    base = cache / name
    with tempfile.TemporaryDirectory(prefix="crk-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "modules"):
            (root / d).mkdir()
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        shutil.copy(HERE / "init.sh", root / "init")
        os.chmod(root / "init", 0o755)
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        order: list[str] = []
        for module in BOOT_MODULES:
            shown = subprocess.run(["modprobe", "-d", str(base), "-S", kver, "--show-depends", module],
                                   capture_output=True, text=True, check=True).stdout
            for line in shown.splitlines():
                if not line.startswith("insmod "):
                    continue   # builtin
                path = Path(line.split()[1])
                ko = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", ".ko", path.name)
                if ko in order:
                    continue
                if path.suffix == ".xz":
                    data = subprocess.run(["xz", "-dc", str(path)], capture_output=True, check=True).stdout
                elif path.suffix == ".zst":
                    data = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
                else:
                    data = path.read_bytes()
                (root / "modules" / ko).write_bytes(data)
                order.append(ko)
        (root / "modules.order").write_text("\n".join(order) + "\n")
        listing = subprocess.run("find . | LC_ALL=C sort", shell=True, cwd=root, capture_output=True, check=True).stdout
        archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], input=listing, cwd=root,
                                 capture_output=True, check=True).stdout
        partial = target.with_suffix(".partial")
        subprocess.run(["gzip", "-1"], input=archive, stdout=partial.open("wb"), check=True)
        partial.rename(target)
    return target


def start_virtiofsd(virtiofsd: str, socket: Path, source: Path, read_only: bool, logfile) -> subprocess.Popen:
    argv = [virtiofsd, f"--socket-path={socket}", "-o", "cache=auto", "-o", "no_posix_lock"]
    if read_only:
        # This virtiofsd has no read-only switch: serve a read-only bind of the root in a private mount
        # namespace, so not even a guest that remounted rw could write to the host.
        view = socket.parent / "root-view"   # removed with the sockets' folder
        script = (f"set -e; mkdir -p {view}; mount --bind {source} {view}; mount -o remount,bind,ro {view}; "
                  f"exec \"$@\" -o source={view}")
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "virtiofsd"] + argv
    else:
        argv += ["-o", f"source={source}"]
    child = spawn(argv, stdout=logfile, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not socket.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"kernels: virtiofsd did not start (see {logfile.name})")
        time.sleep(0.1)
    return child


def write_run_script(out: Path, binary: Path, emulated: bool, pytest_args: list[str], name: str,
                     command: str | None) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(REPO / "Tests"),
        "CONN_REAPER": str(binary),
        "CONN_REAPER_VM": name,
        "CONN_REAPER_EMULATED": "1" if emulated else "0",
    }
    for passthrough in ("CI", "LAB_NETNS_STEM", "PURGE_BENCH_ROUNDS", "CONN_REAPER_TIME_SCALE"):
        if passthrough in os.environ:
            env[passthrough] = os.environ[passthrough]
    lines = ["#!/bin/bash", "set -u"] + [f"export {k}={_quote(v)}" for k, v in env.items()]
    lines += [f"cd {_quote(str(REPO))}",
              "echo \"crk-vm: kernel $(uname -r), $(nproc) vCPUs, CONN_REAPER_EMULATED=$CONN_REAPER_EMULATED\"",
              command or " ".join([_quote(sys.executable), "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-v", "--tb=short", "--color=no",
                        f"--junitxml={out}/junit.xml"] + [_quote(a) for a in pytest_args])]
    (out / "run.sh").write_text("\n".join(lines) + "\n")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def run_vm(args, cache: Path, name: str, accel: str, out: Path) -> tuple[int | None, float, bool]:
    """Boots one VM; returns (the guest run's exit code or None, wall seconds, whether it booted)."""
    kver = (cache / name / "version").read_text().strip()
    initramfs = build_initramfs(cache, name, kver)
    sockets = Path(tempfile.mkdtemp(prefix="crk-kernels-"))
    started = time.monotonic()
    rc = None
    booted = False
    try:
        fslog = (out / "virtiofsd.log").open("w")
        virtiofsd = find_virtiofsd()
        start_virtiofsd(virtiofsd, sockets / "root.sock", Path("/"), True, fslog)
        start_virtiofsd(virtiofsd, sockets / "out.sock", out, False, fslog)
        mods = cache / name / "lib" / "modules" / kver
        cmdline = (f"console=ttyS0 mitigations=off panic=-1 loglevel=4 rdinit=/init "
                   f"crk.out={out} crk.mods={mods}")
        accel_args = (["-accel", "kvm", "-cpu", "host"] if accel == "kvm"
                      else ["-accel", "tcg,thread=multi", "-cpu", "max"])
        memory = args.memory
        argv = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
                "-M", "q35", *accel_args, "-smp", str(args.vcpus), "-m", memory,
                "-object", f"memory-backend-memfd,id=mem,size={memory},share=on", "-numa", "node,memdev=mem",
                "-kernel", str(cache / name / "vmlinuz"), "-initrd", str(initramfs), "-append", cmdline,
                "-serial", "stdio", "-monitor", "none", "-nic", "none",
                "-chardev", f"socket,id=fs0,path={sockets}/root.sock",
                "-device", "vhost-user-fs-pci,queue-size=1024,chardev=fs0,tag=hostroot",
                "-chardev", f"socket,id=fs1,path={sockets}/out.sock",
                "-device", "vhost-user-fs-pci,queue-size=1024,chardev=fs1,tag=out"]
        console = (out / "console.log").open("w")
        vm = spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.set_blocking(vm.stdout.fileno(), False)
        buffer = b""
        deadline = started + args.timeout
        probe_deadline = started + KVM_PROBE_SECONDS if accel == "kvm" else None
        while True:
            chunk = None
            try:
                chunk = vm.stdout.read()
            except BlockingIOError:
                pass
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    console.write(line + "\n")
                    console.flush()
                    if line.startswith("crk-init: up"):
                        booted = True
                    match = re.match(r"CRK-EXIT=(\d+)", line)
                    if match:
                        rc = int(match.group(1))
                    if not re.match(r"\[\s*\d+\.\d+\]", line):   # kernel messages stay in the log
                        print(f"  [{name}] {line}", flush=True)
            elif vm.poll() is not None:
                break
            else:
                time.sleep(0.2)
            now = time.monotonic()
            if probe_deadline and not booted and now > probe_deadline:
                log(f"{name}: no output from the kernel after {KVM_PROBE_SECONDS}s under KVM")
                break
            if now > deadline:
                log(f"{name}: timed out after {args.timeout}s")
                break
        console.close()
    finally:
        end_children()
        shutil.rmtree(sockets, ignore_errors=True)
    return rc, time.monotonic() - started, booted


def console_counts(path: Path) -> dict:
    """From pytest -v's lines on the console, where the run ended before pytest wrote its report."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "time": 0.0, "skips": [], "failures": []}
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED)", line)
        if match:
            test, outcome = match.group(1).split("/")[-1], match.group(2)
            if outcome == "PASSED":
                counts["passed"] += 1
            elif outcome == "SKIPPED":
                counts["skipped"] += 1
                counts["skips"].append((test, "(reason in console.log)"))
            else:
                counts["failed"] += 1
                counts["failures"].append(test)
    return counts


def junit_counts(path: Path) -> dict:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "time": 0.0, "skips": [], "failures": []}
    if not path.exists():
        counts = console_counts(path.parent / "console.log")
        counts["partial"] = True
        return counts
    root = ET.parse(path).getroot()
    for suite in root.iter("testsuite"):
        counts["time"] += float(suite.get("time", 0))
        for case in suite.iter("testcase"):
            test = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
            skipped = case.find("skipped")
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                counts["failures"].append(test)
            elif skipped is not None:
                counts["skipped"] += 1
                counts["skips"].append((test, skipped.get("message", "")))
            else:
                counts["passed"] += 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=os.environ.get("KERNELS", ",".join(MATRIX)))
    parser.add_argument("--cache", default=str(REPO / ".build" / "kernels"))
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER", str(REPO / ".build" / "debug" / "conn-reaper")))
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=os.environ.get("KERNELS_ACCEL", "auto"))
    parser.add_argument("--vcpus", type=int, default=int(os.environ.get("KERNELS_VCPUS", "2")))
    parser.add_argument("--memory", default=os.environ.get("KERNELS_MEMORY", "3G"))
    parser.add_argument("--timeout", type=int, default=int(os.environ.get("KERNELS_TIMEOUT", "3600")),
                        help="seconds per VM")
    parser.add_argument("--label", default="kernel tests")
    parser.add_argument("--command", help="a shell command to run in the VM (in the repo) instead of pytest")
    parser.add_argument("--tests-from", help="a file of test node ids, one a line (# comments)")
    parser.add_argument("pytest_args", nargs="*", default=[])
    args = parser.parse_args()
    expected = None
    if args.tests_from:
        listed = [line.strip() for line in Path(args.tests_from).read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
        args.pytest_args += listed
        # One test or more a line (a line without a parameter runs each): a run that reports fewer (a VM
        # that died mid-run, a report cut short) is not a pass.
        expected = len(listed) if all("::" in test for test in listed) else None
    args.pytest_args = args.pytest_args or ["Tests/Integration"]
    if os.geteuid() != 0:
        # Like the kernel tests on the host (Tests/Integration/conftest.py): skipped, and said so, outside
        # CI; under CI=true, where make test runs the CI subset, a failure.
        if os.environ.get("CI") == "true":
            sys.exit("kernels: needs root (virtiofsd, and the kernel tests inside the VM); CI=true: failing, not skipping")
        log(f"SKIPPED, not run: {args.label} needs root (virtiofsd, and the kernel tests inside the VM)")
        return 0
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    names = [n for n in args.kernels.split(",") if n]
    unknown = [n for n in names if n not in MATRIX]
    if unknown:
        sys.exit(f"kernels: unknown {unknown}; the matrix is {list(MATRIX)}")
    cache = Path(args.cache).resolve()
    subprocess.run([str(HERE / "fetch-kernels.sh"), str(cache)] + [f"{n}:{MATRIX[n][0]}" for n in names], check=True)
    binary = Path(args.binary).resolve()
    if not os.access(binary, os.X_OK):
        sys.exit(f"kernels: no binary at {binary} (make build)")

    accel = args.accel
    if accel == "auto":
        accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
    rows = []
    try:
        for name in names:
            kver = (cache / name / "version").read_text().strip()
            out = cache / "runs" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copy(binary, out / "conn-reaper")   # immune to a rebuild under the run
            log(f"{name} ({MATRIX[name][1]}, {kver}) under {accel.upper()}, {args.vcpus} vCPUs: {args.label}")
            while True:
                write_run_script(out, out / "conn-reaper", accel == "tcg", args.pytest_args, name, args.command)
                rc, wall, booted = run_vm(args, cache, name, accel, out)
                if accel == "kvm" and not booted and args.accel == "auto":
                    log("KVM cannot run this kernel here (a paravirtual /dev/kvm?): TCG from now on")
                    accel = "tcg"
                    continue
                break
            counts = junit_counts(out / "junit.xml")
            counts["expected"] = expected
            rows.append((name, kver, accel, rc, wall, counts))
            print_table([rows[-1]], args.label)
    except KeyboardInterrupt as interrupt:
        log(f"interrupted ({interrupt}); VMs ended")
        end_children()
        return 130
    finally:
        end_children()
    if len(rows) > 1:
        print_table(rows, args.label)
    bad = [r for r in rows if r[3] != 0 or r[5]["failed"] or short(r[5])]
    return 1 if bad else 0


def short(counts: dict) -> bool:
    """Fewer tests reported than the list named (each line names one test, or a parametrized one's every case)."""
    ran = counts["passed"] + counts["failed"] + counts["skipped"]
    return counts.get("expected") is not None and ran < counts["expected"]


def print_table(rows, label: str) -> None:
    print(f"\n{label}:")
    print("| kernel | release | accel | passed | failed | skipped | pytest s | VM wall s | result |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, kver, accel, rc, wall, c in rows:
        result = "ok" if rc == 0 and not c["failed"] else (f"exit {rc}" if rc is not None else "no exit (VM died or timed out)")
        if short(c):
            reported = f"{c['passed'] + c['failed'] + c['skipped']} tests reported, fewer than the {c['expected']} lines listed"
            result = reported if result == "ok" else f"{result}; {reported}"
        if c.get("partial"):
            result += ", counted from the console (no report)"
        print(f"| {name} ({MATRIX[name][1]}) | {kver} | {accel.upper()} | {c['passed']} | {c['failed']} | "
              f"{c['skipped']} | {c['time']:.0f} | {wall:.0f} | {result} |")
    for name, _, _, _, _, c in rows:
        for test in c["failures"]:
            print(f"  {name}: FAILED {test}")
        for test, reason in c["skips"]:
            print(f"  {name}: skipped {test}: {reason}")
    print(flush=True)


if __name__ == "__main__":
    sys.exit(main())
