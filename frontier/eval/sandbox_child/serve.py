"""The completion's side: run prompt + completion, then answer calls of its functions with plain data.

``serve.py PROGRAM RESPONSE_FD MEM CPU NPROC FSIZE``. Requests arrive on stdin, one JSON line each:
``{"fn": name, "args": <codec>, "kwargs": <codec>}``; each answer is one line on RESPONSE_FD:
``{"ok": <codec>}`` or ``{"error": [exception type name, message]}``. Everything here may be subverted
by the completion (it runs in this process): the test runner trusts nothing but decoded plain data.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out

import json

import codec
import limits

limits.apply(*(int(a) for a in sys.argv[3:7]))
path, out = sys.argv[1], os.fdopen(int(sys.argv[2]), "w", buffering=1)
namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
with open(path, encoding="utf-8") as f:
    source = f.read()
try:
    exec(compile(source, path, "exec"), namespace)
except BaseException as exc:  # the completion does not even load: every call fails with this
    load_error = [type(exc).__name__, str(exc)[:500]]
else:
    load_error = None
for line in sys.stdin:
    try:
        request = json.loads(line)
        if load_error:
            raise RuntimeError(f"the completion failed to load: {load_error[0]}: {load_error[1]}")
        fn = namespace[request["fn"]]
        result = fn(*codec.decode(request["args"]), **codec.decode(request["kwargs"]))
        reply = {"ok": json.loads(codec.dumps(result))}
    except BaseException as exc:
        reply = {"error": [type(exc).__name__, str(exc)[:500]]}
    out.write(json.dumps(reply) + "\n")
