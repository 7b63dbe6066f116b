"""Run one program file under resource limits: ``program.py PROGRAM MEM CPU NPROC FSIZE``; its exit status is the result."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves the script's folder out


import limits

limits.apply(*(int(a) for a in sys.argv[2:6]))
path = sys.argv[1]
with open(path, encoding="utf-8") as f:
    source = f.read()
sys.argv = [path]
exec(compile(source, path, "exec"), {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})
