"""The test's side: HumanEval's ``check(candidate)`` with the candidate a proxy to the completion's process.

``check.py PROMPT TEST ENTRY REQUEST_FD RESPONSE_FD VERDICT_FD MEM CPU NPROC FSIZE``. No completion code
ever runs in this process, so only it can write the verdict: ``PASS`` on VERDICT_FD once check() returned
and no call of the candidate failed. The prompt (the problem's own helpers and signature) is run here so
the test can call its helpers.

A call that fails (the completion raised, exited, or answered with something that is not plain data)
never decides the verdict: the test sees `CandidateFailed`, a BaseException no ``except Exception`` or
``except ValueError`` catches, and StopIteration least of all (which would silently end a ``map`` or
``filter`` inside the test's ``all()`` and pass it); and even a test that swallows everything fails,
because the failure is recorded here, outside the completion's reach.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out

import builtins
import json

import codec
import limits

limits.apply(*(int(a) for a in sys.argv[7:11]))
prompt_path, test_path, entry = sys.argv[1], sys.argv[2], sys.argv[3]
requests = os.fdopen(int(sys.argv[4]), "w", buffering=1)
responses = os.fdopen(int(sys.argv[5]), "r")
verdict = os.fdopen(int(sys.argv[6]), "w")
failures = []  # every failed call of the candidate; any one fails the verdict


class CandidateFailed(BaseException):
    """The completion's function did not return plain data (it raised, exited or was killed)."""


def _reply(name, args, kwargs):
    requests.write(
        json.dumps({"fn": name, "args": json.loads(codec.dumps(args)), "kwargs": json.loads(codec.dumps(kwargs))})
        + "\n"
    )
    line = responses.readline()
    if not line:
        raise RuntimeError("the completion's process ended without answering")
    reply = json.loads(line)
    if isinstance(reply, dict) and "ok" in reply:
        return codec.decode(reply["ok"])
    kind, message = reply["error"] if isinstance(reply, dict) and "error" in reply else ("?", "malformed reply")
    raise RuntimeError(f"{str(kind)[:100]}: {str(message)[:500]}")


def _call(name, args, kwargs):
    if failures:  # the verdict is already decided: do not let a later call be answered
        raise CandidateFailed(failures[0])
    try:
        return _reply(name, args, kwargs)
    except BaseException as exc:  # a reply that breaks our decoding is the completion's failure too
        failures.append(f"{name}() failed: {type(exc).__name__}: {exc}")
        raise CandidateFailed(failures[-1]) from None


class Candidate:
    """Stands for the completion's function: every call is answered by the other process."""

    def __init__(self, name):
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return _call(self.__name__, args, kwargs)


namespace = {"__name__": "__main__", "__builtins__": builtins}
with open(prompt_path, encoding="utf-8") as f:
    prompt = f.read()
for source in (prompt, prompt + "\n    pass\n"):  # a prompt may end in a bare signature + docstring
    try:
        exec(compile(source, prompt_path, "exec"), namespace)
        break
    except SyntaxError:
        continue
namespace[entry] = Candidate(entry)
with open(test_path, encoding="utf-8") as f:
    exec(compile(f.read(), test_path, "exec"), namespace)
try:
    namespace["check"](namespace[entry])
finally:
    if failures:  # stderr is the failed result's detail; the exit status says the same
        sys.stderr.write(f"CandidateFailed: {failures[0]}\n")
        os._exit(1)
verdict.write("PASS\n")
verdict.close()
