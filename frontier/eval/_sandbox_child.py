"""Runs one untrusted program inside the sandbox; executed by path (``python -I -S``), never imported.

It must not import frontier (or anything outside the standard library): it starts with ``-S`` so
the interpreter loads nothing but this file, then, before a line of the program runs,

1. sets resource limits on itself (inherited by anything it spawns): address space (RLIMIT_AS),
   CPU seconds (RLIMIT_CPU), processes of this user (RLIMIT_NPROC, enforced by the kernel only
   for non-root users), file size (RLIMIT_FSIZE) and no core dumps;
2. when the guard is on, installs a PEP 578 audit hook that refuses: writing, creating, renaming
   or removing files outside the working directory; sockets; spawning processes (fork, exec,
   subprocess, os.system) and signalling other processes; loading native code through ctypes.
   Audit hooks cannot be removed from Python code; they are a second line behind the
   kernel-level limits and namespaces the parent sets up, not a security boundary on their own;
3. reads a one-time token from stdin and writes it to stdout only if the program ran to its
   end without an exception, so a program that exits early with status 0 (``os._exit(0)``)
   does not count as passed.

argv: program_path memory_bytes cpu_seconds max_processes max_file_bytes guard(0|1)
"""

import os
import resource
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # event -> indexes of the path arguments it modifies
    "os.remove": (0,),
    "os.rmdir": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),
    "os.link": (0, 1),
    "os.symlink": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.chflags": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "os.setxattr": (0,),
    "os.removexattr": (0,),
    "shutil.rmtree": (0,),
    "shutil.chown": (0,),
    "shutil.move": (0, 1),
}
_BLOCKED_EVENTS = {
    "os.fork": "spawning processes",
    "os.forkpty": "spawning processes",
    "os.posix_spawn": "spawning processes",
    "os.spawn": "spawning processes",
    "os.system": "spawning processes",
    "os.exec": "spawning processes",
    "os.startfile": "spawning processes",
    "subprocess.Popen": "spawning processes",
    "pty.spawn": "spawning processes",
    "os.kill": "signalling processes",
    "os.killpg": "signalling processes",
    "signal.pthread_kill": "signalling processes",
    "socket.__new__": "network access",
    "socket.connect": "network access",
    "socket.bind": "network access",
    "socket.getaddrinfo": "network access",
    "socket.sendto": "network access",
    "ctypes.dlopen": "loading native code",
    "ctypes.dlsym": "loading native code",
    "ctypes.cdata": "reading raw memory",
    "ctypes.addressof": "reading raw memory",
    "sys.setprofile": "tracing the sandbox",
    "sys.settrace": "tracing the sandbox",
}


def _set_limits(memory: int, cpu: int, nproc: int, fsize: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # soft: SIGXCPU, hard: SIGKILL
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _install_guard(root: str) -> None:
    root = os.path.realpath(root)
    allowed = {os.devnull}
    busy = []  # re-entrancy: realpath below may itself raise audit events

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already-open descriptor: checked when it was opened
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path)
        full = os.path.realpath(os.path.join(root, path))
        return full in allowed or full == root or full.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if busy:
            return
        why = _BLOCKED_EVENTS.get(event)
        if why is not None:
            raise PermissionError(f"sandbox: {why} is not allowed ({event})")
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            targets = (path,) if writes and path is not None else ()
        else:
            targets = tuple(args[i] for i in _PATH_EVENTS.get(event, ()) if i < len(args))
        busy.append(1)
        try:
            for target in targets:
                if not inside(target):
                    raise PermissionError(f"sandbox: writing outside the working directory is not allowed ({target!r})")
        finally:
            busy.pop()

    sys.addaudithook(hook)


def main() -> int:
    program_path, memory, cpu, nproc, fsize, guard = sys.argv[1:7]
    token = sys.stdin.readline().strip()
    sys.stdin.close()
    source = open(program_path, encoding="utf-8").read()
    _set_limits(int(memory), int(cpu), int(nproc), int(fsize))
    code = compile(source, "program.py", "exec")
    if guard == "1":
        _install_guard(os.getcwd())
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(code, namespace)
    except SystemExit as exc:  # an early exit never counts as passing, whatever its status
        sys.stderr.write(f"program exited early (SystemExit: {exc.code!r})\n")
        return 1
    sys.stdout.flush()
    os.write(1, f"\n{token}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
