"""bubblewrap's second wall, for real: the seccomp filter refuses the syscalls kernel exploits
lean on (EPERM; clone3 ENOSYS so libc falls back to clone), and no user namespace can be made
inside a sandbox; ordinary work (git, python, shell pipelines, sed) still runs.

Each probe picks arguments for which the kernel, without the filter, would answer something
other than EPERM (success, EFAULT, EINVAL, EBADF…) where one exists: the sandbox's dropped
capabilities alone do not make these tests pass.
"""

import errno
import os
import subprocess

import pytest

from sandboxes.backends import seccomp
from sandboxes.backends.base import ExecResult, SandboxSpec
from sandboxes.backends.bubblewrap import bwrap_argv

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=64)

# name → the syscall's arguments: each one the kernel would accept, or refuse with another errno.
CLONE_NEWUSER = seccomp.NAMESPACE_FLAGS["CLONE_NEWUSER"]
SIGCHLD = 17
PROBES = {
    "ptrace": (0, 0, 0, 0),  # PTRACE_TRACEME: succeeds unfiltered
    "mount": (0, 0, 0, 0, 0),  # EFAULT unfiltered (the path is read before the capability check)
    "umount2": (0, 0xFFFF),  # EINVAL unfiltered (flags are checked first)
    "keyctl": (0, -3 & 0xFFFFFFFF, 0),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "add_key": (0, 0, 0, 0, 0),  # EFAULT unfiltered
    "request_key": (0, 0, 0, 0),  # EFAULT unfiltered
    "bpf": (999, 0, 0),  # EINVAL unfiltered
    "perf_event_open": (0, 0, -1 & 0xFFFFFFFF, -1 & 0xFFFFFFFF, 0),  # EFAULT unfiltered
    "userfaultfd": (1,),  # UFFD_USER_MODE_ONLY: an fd unfiltered
    "unshare": (CLONE_NEWUSER,),  # ENOSPC with --disable-userns alone; 0 with neither
    "setns": (-1 & 0xFFFFFFFF, 0),  # EBADF unfiltered
    "clone": (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),  # ENOSPC with --disable-userns alone
    "process_vm_readv": (1, 0, 0, 0, 0, 0),  # 0 bytes read unfiltered
    "open_by_handle_at": (-1 & 0xFFFFFFFF, 0, 0),  # EBADF unfiltered
    # Some of these the dropped capabilities refuse with EPERM already: a second wall.
    "kexec_load": (0, 0, 0, 0),
    "init_module": (0, 0, 0),
    "finit_module": (-1 & 0xFFFFFFFF, 0, 0),
    "delete_module": (0, 0),
    "swapon": (0, 0),
    "reboot": (0, 0, 0, 0),
    "pivot_root": (0, 0),
}
# Calls the raw syscall; a child made by a clone that got through leaves at once.
PROGRAM = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
args = [ctypes.c_ulong(int(a)) for a in sys.argv[2:]]
me = os.getpid()
rc = libc.syscall(ctypes.c_long(int(sys.argv[1])), *args)
if os.getpid() != me:
    os._exit(0)
print(rc, ctypes.get_errno())
"""


def syscall_number(name: str) -> int:
    nr = seccomp._libseccomp().seccomp_syscall_resolve_name(name.encode())
    assert nr >= 0, name
    return nr


@pytest.fixture
def bwrap():
    from tests.sandboxes.conftest import BACKEND_FACTORIES, _data_dir

    with BACKEND_FACTORIES["bwrap"](_data_dir()) as backend:
        yield backend


def run(backend, handle, argv, **kwargs):
    events = list(backend.exec(handle, argv, **kwargs))
    result = events[-1]
    assert isinstance(result, ExecResult)
    return b"".join(e.data for e in events[:-1]).decode(errors="replace"), result


def probe(backend, handle, name: str, args) -> tuple[int, int]:
    out, result = run(
        backend, handle, ["python3", "-c", PROGRAM, str(syscall_number(name)), *map(str, args)]
    )
    assert result.exit_code == 0, out
    rc, err = out.split()
    return int(rc), int(err)


@pytest.mark.parametrize("name", list(PROBES))
def test_a_dangerous_syscall_is_refused_with_eperm(bwrap, name):
    handle = bwrap.create(SPEC)
    assert probe(bwrap, handle, name, PROBES[name]) == (-1, errno.EPERM)


def test_clone3_says_enosys_so_libc_falls_back_to_clone(bwrap):
    handle = bwrap.create(SPEC)
    assert probe(bwrap, handle, "clone3", (0, 0)) == (-1, errno.ENOSYS)


def test_no_user_namespace_can_be_made_inside_even_without_the_filter(bwrap):
    """--disable-userns on its own: bwrap as the backend runs it, minus the seccomp filter."""
    handle = bwrap.create(SPEC)
    argv = bwrap_argv(
        etc=str(bwrap.ws.etc()),
        workspace=str(bwrap.workspace_path(handle)),
        network="none",
        cwd="/workspace",
    )
    assert "--seccomp" not in argv
    done = subprocess.run(
        [*argv, "unshare", "--user", "true"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "unshare failed" in done.stderr, done.stderr


def test_the_filter_is_compiled_once_and_each_command_gets_its_own_copy():
    first = seccomp.filter_fd()
    second = seccomp.filter_fd()
    try:
        assert first != second
        program = seccomp.filter_program()
        assert 0 < len(program) < 65536 and len(program) % 8 == 0
        for fd in (first, second):
            assert (
                subprocess.run(["cat"], stdin=fd, capture_output=True, check=True).stdout == program
            )
    finally:
        for fd in (first, second):
            os.close(fd)


def test_ordinary_work_still_runs_under_the_filter(bwrap):
    handle = bwrap.create(SPEC)
    script = """
set -e
git init -q repo && cd repo
git config user.email a@example.com && git config user.name A
printf 'hello world\\n' > f.txt
sed -i 's/world/sandbox/' f.txt
git add f.txt && git commit -qm first
git log --oneline | wc -l
cat f.txt | tr a-z A-Z | sort | uniq
python3 -c 'import subprocess, threading
t = threading.Thread(target=print, args=("thread",)); t.start(); t.join()
print(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
import multiprocessing as mp
with mp.Pool(2) as p: print(sum(p.map(abs, [-1, -2, 3])))'
grep -c Seccomp:.2 /proc/self/status
"""
    out, result = run(bwrap, handle, ["sh", "-c", script], timeout_s=60)
    assert result.exit_code == 0, out
    assert out.split("\n")[:6] == ["1", "HELLO SANDBOX", "thread", "child", "6", "1"]


# Raw calls whose arguments the filter judges: each prints "rc errno" per line.
ARG_PROGRAM = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    print(rc if rc < 0 else 0, ctypes.get_errno())
nrs = dict(arg.split("=") for arg in sys.argv[1:])
nr = lambda name: int(nrs[name])
params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
call(nr("io_uring_setup"), 1, ctypes.addressof(params))
call(nr("io_uring_enter"), 2**32 - 1, 0, 0, 0, 0, 0)
call(nr("io_uring_register"), 2**32 - 1, 0, 0, 0)
for family in (40, 38, 0, 3, 2**32 + 2, 1, 2, 10, 16):  # vsock, alg, …; unix, inet, inet6, netlink
    call(nr("socket"), family, 2 if family in (2, 10) else (3 if family == 16 else 1), 0)
pair = (ctypes.c_int * 2)()
call(nr("socketpair"), 40, 1, 0, ctypes.addressof(pair))
call(nr("socketpair"), 1, 1, 0, ctypes.addressof(pair))
fd = os.open("/workspace/alloc", os.O_RDWR | os.O_CREAT)
# keep-size, zero-range, zero-range|keep-size, insert-range, unshare, 1 << 32; then 0, punch
for mode in (0x01, 0x10, 0x11, 0x20, 0x41, 2**32, 0, 0x03):
    call(nr("fallocate"), fd, mode, 0, 1 << 20)
print(os.stat("/workspace/alloc").st_blocks * 512)
# netlink: audit, netfilter, generic, audit with the upper half set; then route and sock_diag
for protocol in (9, 12, 16, 2**32 + 9, 0, 4):
    call(nr("socket"), 16, 3, protocol)
import socket
print(len(socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)) > 0)
import shutil, subprocess
ip = shutil.which("ip")
print(subprocess.run([ip, "-o", "addr"], capture_output=True).returncode if ip else "no ip")
"""


def test_io_uring_other_socket_families_and_fallocate_modes_are_refused(bwrap):
    """Without the argument rules each refused call here succeeds (or fails otherwise): the
    host's kernel has io_uring enabled and vsock and AF_ALG available, and gives a network
    namespace's netlink audit, netfilter and generic sockets."""
    handle = bwrap.create(SPEC)
    names = ("io_uring_setup", "io_uring_enter", "io_uring_register", "socket", "socketpair")
    nrs = [f"{name}={syscall_number(name)}" for name in (*names, "fallocate")]
    out, result = run(bwrap, handle, ["python3", "-c", ARG_PROGRAM, *nrs])
    assert result.exit_code == 0, out
    lines = out.split("\n")
    calls = [tuple(map(int, line.split())) for line in lines[:22]]
    eperm, enoaf, enotsup = (-1, errno.EPERM), (-1, errno.EAFNOSUPPORT), (-1, errno.EOPNOTSUPP)
    assert calls[:3] == [eperm] * 3, "io_uring"
    assert calls[3:8] == [enoaf] * 5, "socket: vsock, alg, 0, 3, inet with the upper half set"
    assert [rc for rc, _ in calls[8:12]] == [0] * 4, "socket: unix, inet, inet6, netlink"
    assert calls[12:14] == [enoaf, (0, 0)], "socketpair: vsock refused, unix made"
    assert calls[14:20] == [enotsup] * 6, "fallocate's allocating modes that keep the size"
    assert calls[20:22] == [(0, 0), (0, 0)], "fallocate mode 0 and a hole punch"
    assert int(lines[22]) == 0  # allocated, then the hole punched: nothing kept
    netlink = [tuple(map(int, line.split())) for line in lines[23:29]]
    noproto = (-1, errno.EPROTONOSUPPORT)
    assert netlink[:4] == [noproto] * 4, "netlink: audit, netfilter, generic (and audit again)"
    assert [rc for rc, _ in netlink[4:]] == [0, 0], "netlink: route and sock_diag"
    assert lines[29] == "True", "getaddrinfo (it asks netlink for the addresses) still works"
    assert lines[30] in ("0", "no ip"), "ip (netlink route) still works where it is installed"


def test_fallocate_keeping_the_size_cannot_pass_the_disk_limit(bwrap):
    """`fallocate -n` allocated 1 GB at disk_mb=16: no size change, so RLIMIT_FSIZE never
    applied, and it ended before the watch looked."""
    handle = bwrap.create(SandboxSpec(timeout_s=120, disk_mb=16))
    out, result = run(bwrap, handle, ["sh", "-c", ": > big; fallocate -n -l 64M big"])
    assert result.exit_code != 0, out
    assert "unsupported" in out  # util-linux's words for EOPNOTSUPP
    assert os.stat(bwrap.workspace_path(handle) / "big").st_blocks == 0
