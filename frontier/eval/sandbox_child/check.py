"""The test's side: HumanEval's ``check(candidate)`` with the candidate a proxy to the completion's process.

``check.py PROMPT TEST ENTRY REQUEST_FD RESPONSE_FD VERDICT_FD MEM CPU NPROC FSIZE``. No completion code
ever runs in this process, so only it can write the verdict: ``PASS`` on VERDICT_FD once check() returned.
The prompt (the problem's own helpers and signature) is run here so the test can call its helpers.
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


def _call(name, args, kwargs):
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
    kind, message = reply["error"] if isinstance(reply, dict) and "error" in reply else ("RuntimeError", "bad reply")
    error = getattr(builtins, str(kind), None)
    if not (isinstance(error, type) and issubclass(error, Exception)):
        error = RuntimeError
    raise error(str(message))


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
namespace["check"](namespace[entry])
verdict.write("PASS\n")
verdict.close()
