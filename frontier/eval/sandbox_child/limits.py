"""Resource limits a sandboxed process sets on itself before any untrusted code runs (inherited by children)."""

import resource


def apply(memory_bytes: int, cpu_seconds: int, max_processes: int, max_file_bytes: int) -> None:
    for which, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_NPROC, max_processes),  # counted per real uid: the sandbox's unprivileged one
        (resource.RLIMIT_FSIZE, max_file_bytes),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(which, (value, value))
