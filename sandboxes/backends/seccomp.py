"""The seccomp filter every bubblewrap sandbox runs under: kernel attack surface it never needs.

bubblewrap's namespaces hide the host, but the sandbox still talks to the host kernel directly,
so syscalls that ordinary builds and tests never make (and that kernel exploits favour:
ptrace, mount, keyrings, bpf, perf, userfaultfd, module loading, new namespaces…) fail with
EPERM. `clone3` fails with ENOSYS instead: its flags sit in memory a filter cannot read, and
libc then falls back to `clone`, whose namespace flags the filter does check.

Some calls are refused only for some arguments, as container runtimes do:
- `io_uring_*` always (EPERM): a ring runs syscalls (fallocate, sockets…) the filter never
  sees, so every argument rule here would be void for a command that built one.
- `socket`/`socketpair` for families other than unix, IPv4, IPv6 and netlink (EAFNOSUPPORT):
  vsock, for one, is not isolated by a network namespace and reached the VM's host.
- `socket(AF_NETLINK, …)` for protocols other than NETLINK_ROUTE (addresses and routes: glibc's
  getaddrinfo, `ip`) and NETLINK_SOCK_DIAG (`ss`), EPROTONOSUPPORT: audit, netfilter, generic
  netlink and the rest are kernel interfaces no build needs.
- `fallocate` in every mode but 0 (allocate and extend: the file size limit applies) and a
  hole punch (frees blocks), EOPNOTSUPP: KEEP_SIZE and ZERO_RANGE allocate blocks without
  growing the file, so RLIMIT_FSIZE never saw a 1 GB allocation in a 16 MB sandbox; INSERT_RANGE
  grows it without that check. Mode 0 stays: what it allocates the disk watch counts as it
  counts written data (refused, glibc's posix_fallocate would only write the same blocks), and
  programs that call it without a fallback (util-linux `fallocate`, some installers) keep working.

The program is compiled once per process with libseccomp (Debian's libseccomp2, through
ctypes: the filter is a few hundred bytes of classic BPF, so no binding is needed) and handed
to each `bwrap --seccomp FD` through a pipe: a few microseconds per command.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import itertools
import os

from sandboxes.backends.base import SandboxError

# Each fails with EPERM, whatever its arguments. Names the running kernel's architecture lacks
# are skipped.
BLOCKED = (
    # debugging other processes and reading their memory
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # the mount table and namespaces (the sandbox's are made before the filter applies)
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    # kernel keyrings
    "keyctl",
    "add_key",
    "request_key",
    # kernel programs, tracing and fault handling often used by exploits
    "bpf",
    "perf_event_open",
    "userfaultfd",
    # loading another kernel or modules, swap, rebooting, the clock
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    # host-wide accounting and I/O privileges
    "acct",
    "quotactl",
    "iopl",
    "ioperm",
    "lookup_dcookie",
    "nfsservctl",
    "vhangup",
    "name_to_handle_at",
    "open_by_handle_at",
    # rings that run syscalls out of the filter's sight
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)
# socket(2) families a sandbox may use; the rest fail with EAFNOSUPPORT.
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCKET_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK)
# netlink protocols a sandbox may open (NETLINK_ROUTE, NETLINK_SOCK_DIAG); the rest fail with
# EPROTONOSUPPORT.
NETLINK_PROTOCOLS = (0, 4)
# fallocate(2) modes a sandbox may use (0, and FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE);
# the rest fail with EOPNOTSUPP.
FALLOCATE_MODES = (0, 0x01 | 0x02)
NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_LT = 2
_SCMP_CMP_EQ = 4
_SCMP_CMP_GT = 6
_SCMP_CMP_MASKED_EQ = 7
_NR_SCMP_ERROR = -1  # libseccomp's __NR_SCMP_ERROR: the name is unknown on this architecture


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise SandboxError("libseccomp is not installed (Debian package libseccomp2)") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _ArgCmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == _NR_SCMP_ERROR:
        return
    array = (_ArgCmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc < 0:
        raise SandboxError(f"seccomp: cannot add the rule for {name}: {os.strerror(-rc)}")


def _refuse_all_but(
    lib: ctypes.CDLL,
    ctx: int,
    code: int,
    name: str,
    arg: int,
    allowed: tuple[int, ...],
    *when: _ArgCmp,
) -> None:
    """`name` fails with `code` unless argument `arg` is one of `allowed` (only when the
    comparisons `when`, on other arguments, all hold). A rule compares one argument once and
    AND-s its comparisons, and rules are OR-ed: one rule per gap between allowed values. The
    argument is compared as 64 bits: a value whose upper half is set (the kernel reads the
    lower) is above every allowed value, so refused."""
    action = _act_errno(code)
    values = sorted(allowed)
    if values[0] > 0:
        _rule(lib, ctx, action, name, *when, _ArgCmp(arg, _SCMP_CMP_LT, values[0], 0))
    for low, high in itertools.pairwise(values):
        for value in range(low + 1, high):
            _rule(lib, ctx, action, name, *when, _ArgCmp(arg, _SCMP_CMP_EQ, value, 0))
    _rule(lib, ctx, action, name, *when, _ArgCmp(arg, _SCMP_CMP_GT, values[-1], 0))


@functools.cache
def filter_program() -> bytes:
    """The compiled BPF program (struct sock_filter[]), as `bwrap --seccomp` reads it."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SandboxError("seccomp: libseccomp could not start a filter")
    try:
        eperm = _act_errno(errno.EPERM)
        for name in BLOCKED:
            _rule(lib, ctx, eperm, name)
        _rule(lib, ctx, _act_errno(errno.ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS.values():
            # Rules for one syscall are OR-ed: any namespace flag in clone's flags is refused.
            # (s390 passes the flags second; libseccomp does not hide that, and we don't run there.)
            _rule(lib, ctx, eperm, "clone", _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
        for name in ("socket", "socketpair"):
            _refuse_all_but(lib, ctx, errno.EAFNOSUPPORT, name, 0, SOCKET_FAMILIES)
        netlink = _ArgCmp(0, _SCMP_CMP_EQ, AF_NETLINK, 0)
        _refuse_all_but(lib, ctx, errno.EPROTONOSUPPORT, "socket", 2, NETLINK_PROTOCOLS, netlink)
        _refuse_all_but(lib, ctx, errno.EOPNOTSUPP, "fallocate", 1, FALLOCATE_MODES)
        read_fd, write_fd = os.pipe()
        try:
            rc = lib.seccomp_export_bpf(ctx, write_fd)
            os.close(write_fd)
            write_fd = -1
            if rc < 0:
                raise SandboxError(f"seccomp: cannot export the filter: {os.strerror(-rc)}")
            program = b""
            while chunk := os.read(read_fd, 65536):
                program += chunk
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
    finally:
        lib.seccomp_release(ctx)
    if not program or len(program) % 8:
        raise SandboxError("seccomp: libseccomp exported no filter")
    return program


def filter_fd() -> int:
    """A fresh readable fd holding the program, for one `bwrap --seccomp FD` (the caller
    closes it once bwrap has it). A pipe: bwrap reads to its end, and the program (a few
    hundred bytes) fits the pipe's buffer, so the write never blocks."""
    program = filter_program()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        os.write(write_fd, program)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd
