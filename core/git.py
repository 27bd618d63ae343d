"""Host-side git that repository content cannot steer: the one way Convoy runs `git` on the host.

Every host-side call (mirrors, checkouts for sandboxes, publishing) goes through `git_run`,
which reads no system, user or repository-chosen executables:

- no system or user config (`GIT_CONFIG_NOSYSTEM`, `GIT_CONFIG_GLOBAL=/dev/null`, an empty
  `HOME`), no inherited `GIT_*` variables, no prompts, no credential helpers;
- hooks off (`core.hooksPath=/dev/null`), no fsmonitor, no pager, editor, signing program,
  ssh command or proxy taken from a repository's config (command-line `-c` wins over it);
- only the https, ssh and file transports (`ext::` would run a command);
- for local (`file://` or path) remotes git starts `upload-pack`/`receive-pack` in the other
  repository with a cleaned environment, so our `-c` options would not reach it: `git_run`
  hands it its own safe command line (`local_pack_option`), and the receiving side may not
  update a checked-out branch (that would check files out through the remote's filters).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

GIT_TIMEOUT_S = 900
SSH_COMMAND = "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new"

# Applied to every host-side git process. A `-c` option outranks the repository's own config.
SAFE_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.pager=cat",
    "core.editor=false",
    "core.askPass=",
    f"core.sshCommand={SSH_COMMAND}",
    "core.gitProxy=",
    "core.alternateRefsCommand=",
    "credential.helper=",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "push.gpgSign=false",
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    "protocol.file.allow=always",
    "protocol.ext.allow=never",
    # A server's redirect would send git (and a token in http.extraheader) to a host Convoy
    # never checked: the loopback's, the private network's.
    "http.followRedirects=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "diff.external=",
    "advice.detachedHead=false",
    "receive.denyCurrentBranch=refuse",
)


class GitError(Exception):
    """A host-side git command failed; the message ends with the tail of git's stderr."""

    def __init__(self, message: str, *, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def git_config_args() -> list[str]:
    args: list[str] = []
    for item in SAFE_CONFIG:
        args += ["-c", item]
    return args


# What a host-side git, and the ssh, curl and upload-pack it starts, sees of the worker's
# environment: how to find programs, the locale, the host's proxy and CA bundle. Nothing else
# (the database's URL, a provider's key, the code host's token), which a program a repository
# or a remote could name would otherwise read.
ENV_KEPT = frozenset(
    ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR",
     "CURL_CA_BUNDLE", "http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY",
     "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
)  # fmt: skip


def git_env(home: str | Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a host-side git: ENV_KEPT of the worker's, then our own settings."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEPT or k.startswith("LC_")}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home),
        LC_ALL="C.UTF-8",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="/bin/false",
        SSH_ASKPASS="/bin/false",
        GIT_SSH_COMMAND=SSH_COMMAND,
        GIT_PROTOCOL_FROM_USER="0",
        GIT_NO_REPLACE_OBJECTS="1",
        GIT_NO_LAZY_FETCH="1",  # a promisor remote's objects are never fetched on the side
    )
    env.update(extra or {})
    return env


def git_remote_is_local(url: str) -> bool:
    """True for remotes git serves by starting a git process on this host."""
    return url.startswith("file://") or url.startswith("/") or url.startswith(".")


def local_pack_option(url: str, program: str) -> list[str]:
    """`--upload-pack=…` or `--receive-pack=…` (`program`) carrying our safe config, for a local
    remote: git clears `-c` options from the environment of the process it starts in the other
    repository. Empty for network remotes: their server decides what runs there."""
    if program not in ("upload-pack", "receive-pack"):
        raise ValueError(program)
    if not git_remote_is_local(url):
        return []
    config = " ".join(f"-c {shlex.quote(item)}" for item in SAFE_CONFIG)
    return [f"--{program}=git {config} {program}"]


def git_run(
    *args: str,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = GIT_TIMEOUT_S,
) -> bytes:
    """Run `git <args>` safely (see the module docstring); its stdout, or GitError."""
    with tempfile.TemporaryDirectory(prefix="convoy-git-") as home:
        proc = subprocess.run(
            ["git", *git_config_args(), *args],
            cwd=cwd,
            env=git_env(home, env),
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise GitError(f"git {args[0]} failed: {tail}", returncode=proc.returncode)
    return proc.stdout
