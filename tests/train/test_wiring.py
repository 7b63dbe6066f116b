"""The one assembly of a run (frontier.train.wiring): both stages go through it, and its pieces work alone.

Each piece takes only its part of the config: the engine: section (shared), the stage's batch keys and budget."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import frontier.finetune.run
import frontier.train
import frontier.train.run
import frontier.train.wiring
from frontier.config import Params
from frontier.data.tokens import TokenShards
from frontier.model.build import build_model
from frontier.model.loss import CausalLMWithLoss
from frontier.train.batches.data import TrainBatches, WindowSampler
from frontier.train.engine.schedule import LRSchedule
from frontier.train.run import train_budget
from frontier.train.wiring import Wiring, assemble, prepare_model, seed_all, start_ranks
from tests.train.helpers import VOCAB, Corpus, params

# What assembling a run takes: a stage that names one of these builds (part of) its own engine, gate,
# store, monitor or loop instead of taking frontier.train.wiring's.
ASSEMBLY = {
    "init_distributed", "setup_logging", "route_kernels", "enable_activation_checkpointing",
    "build_client_optimizer", "StepGate", "make_engine", "build_ds_config", "compile_for_training",
    "CheckpointStore", "TrainerState", "LoopParts", "Trainer", "RunMonitor", "device_peak_flops",
    "resolve_split", "write_record",
}  # fmt: skip


def _names(module: object) -> set[str]:
    """Every name a module's source imports or reads (functions' lazy imports included)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom | ast.Import):
            names.update(alias.asname or alias.name.rsplit(".", 1)[-1] for alias in node.names)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(Path(module.__file__).read_text(encoding="utf-8")))  # type: ignore[attr-defined]
    return names


def test_the_assembly_is_named_in_the_wiring_and_in_neither_stage() -> None:
    """Static half of the proof: the wiring uses every piece of the assembly; train and finetune none of them."""
    assert ASSEMBLY <= _names(frontier.train.wiring)
    assert not ASSEMBLY & _names(frontier.finetune.run)
    assert not ASSEMBLY & _names(frontier.train.run)
    for stage in (frontier.finetune.run, frontier.train.run):
        assert {"assemble", "begin", "run"} <= _names(stage)


def test_below_the_stages_no_module_takes_the_whole_train_section() -> None:
    """The engine, batch-size, monitor and checkpoint rooms take their part (engine:, the batch keys, the monitor
    and alert settings); only the stage level of frontier/train (wiring, run, loop, export) may name a stage's
    section type. And finetune reads nothing of train: (its run is engine: + finetune:)."""
    root = Path(frontier.train.__file__).parent
    below = [path for path in root.rglob("*.py") if path.parent != root]
    assert below
    for path in below:
        assert "TrainConfig" not in path.read_text(encoding="utf-8"), path
    lora = _names(frontier.finetune.run)
    assert "TrainConfig" not in lora and "train" not in lora  # no params.train, no `from ... import train`


@pytest.fixture
def builders(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """The module each engine, checkpoint store and loop is built from, by what was built (the real ones run)."""
    import frontier.train.checkpoint.checkpoint as checkpoint
    import frontier.train.engine.engine as engine
    import frontier.train.loop as loop

    calls: dict[str, list[str]] = {"engine": [], "store": [], "trainer": []}

    def spy(kind: str, original: Callable[..., object]) -> Callable[..., object]:
        def called(*args: object, **kwargs: object) -> object:
            calls[kind].append(sys._getframe(1).f_globals["__name__"])
            return original(*args, **kwargs)

        return called

    monkeypatch.setattr(engine, "make_engine", spy("engine", engine.make_engine))
    monkeypatch.setattr(checkpoint.CheckpointStore, "__init__", spy("store", checkpoint.CheckpointStore.__init__))
    monkeypatch.setattr(loop.Trainer, "__init__", spy("trainer", loop.Trainer.__init__))
    yield calls


def test_train_and_finetune_build_their_engine_store_and_loop_in_the_wiring(
    tmp_path: Path, corpus: Corpus, builders: dict[str, list[str]]
) -> None:
    """Dynamic half: a real train and a real fine-tune each build one engine, one checkpoint store and one
    loop, every one of them from frontier.train.wiring."""
    from frontier.config import load_params
    from frontier.finetune.run import finetune
    from frontier.finetune.sft_data import build_sft_pairs
    from frontier.train.run import train
    from tests.eval.tiny import trained_run
    from tests.finetune.test_lora import FT_OVERRIDES
    from tests.finetune.test_sft_data import MODULES, prepared_dir

    ft_params = load_params(None, [*FT_OVERRIDES, "finetune.max_steps=2", "finetune.eval_every=0"])
    build_sft_pairs(ft_params, prepared_dir(tmp_path / "prepared", MODULES), tmp_path / "sft")
    base = trained_run()["out"] / "model"  # may train here (first use in the session): start counting after it
    for kind in builders:
        builders[kind].clear()

    train(params("train.max_steps=2"), corpus.tokens, corpus.tokenizer, tmp_path / "out", tmp_path / "ckpt")
    assert builders == {kind: ["frontier.train.wiring"] for kind in builders}
    for kind in builders:
        builders[kind].clear()
    metrics = finetune(ft_params, base, tmp_path / "sft", tmp_path / "ft", tmp_path / "ft_ckpt")
    assert builders == {kind: ["frontier.train.wiring"] for kind in builders}
    assert metrics["steps"] == 2


def _module(seed: int = 0) -> tuple[CausalLMWithLoss, torch.nn.Module]:
    p = params()
    seed_all(seed)
    lm = build_model(p.model, VOCAB)
    prepare_model(lm, p.kernels, p.engine)
    return CausalLMWithLoss(lm, p.kernels), lm


def _assemble(module: CausalLMWithLoss, p: Params, ckpt: Path, identity: dict[str, object], seed: int) -> Wiring:
    return assemble(module, p.engine, p.train, train_budget(p.train), p.optimizer, start_ranks(), seed=seed,
                    seq_len=16, checkpoints_dir=ckpt, identity=identity)  # fmt: skip


def test_assemble_optimizes_only_the_trainable_parameters_and_reseeds_per_rank(tmp_path: Path) -> None:
    """A frozen base stays out of the optimizer; after the engine the RNG is the rank's own dropout stream."""
    p = params()
    info = start_ranks()
    module, lm = _module()
    lm.get_input_embeddings().weight.requires_grad_(False)  # the embedding (tied head) frozen, as a base is
    wiring = _assemble(module, p, tmp_path / "ckpt", {}, seed=7)
    optimized = {id(q) for group in wiring.engine.optimizer.param_groups for q in group["params"]}
    trainable = {id(q) for q in module.parameters() if q.requires_grad}
    assert optimized == trainable and id(lm.get_input_embeddings().weight) not in optimized
    drawn = torch.rand(4)
    seed_all(7 + 1000 * info.rank)
    assert torch.equal(drawn, torch.rand(4))
    assert wiring.layout.global_batch == p.train.micro_batch_size * p.train.grad_accum_steps * info.world_size
    assert wiring.split.chosen_by == "params"


def _wired(overrides: tuple[str, ...], ckpt: Path, identity: dict[str, object]) -> tuple[Wiring, object]:
    p = params(*overrides)
    module, _ = _module()
    return _assemble(module, p, ckpt, identity, seed=p.seed), p


def _run(wiring: Wiring, p: object, corpus: Corpus) -> object:
    begun = wiring.begin()
    batches = TrainBatches(WindowSampler(TokenShards(corpus.tokens / "train"), 16, 0, False), wiring.layout)
    schedule = LRSchedule(p.schedule, p.optimizer.lr, wiring.budget.max_steps)  # type: ignore[attr-defined]
    trainer = wiring.run(begun, batches, [], schedule, seq_len=16, flops_per_token=1.0)
    return begun, trainer


def test_begin_resumes_a_run_of_the_same_identity_and_restarts_a_changed_one(tmp_path: Path, corpus: Corpus) -> None:
    wiring, p = _wired(("train.max_steps=2",), tmp_path / "ckpt", {"run": 1})
    begun, trainer = _run(wiring, p, corpus)
    assert begun.start is None and begun.state.seed == p.seed and begun.logs_dir == tmp_path / "ckpt" / "logs"
    assert trainer.state.step == 2 and trainer.stop_reason == "max_steps"
    assert (tmp_path / "ckpt" / "step_00000002").is_dir() and (tmp_path / "ckpt" / "logs" / "train.csv").is_file()

    wiring, p = _wired(("train.max_steps=3",), tmp_path / "ckpt", {"run": 1})
    again, trainer = _run(wiring, p, corpus)
    assert again.start == tmp_path / "ckpt" / "step_00000002" and again.state.run_id == begun.state.run_id
    assert trainer.state.step == 3

    wiring, p = _wired(("train.max_steps=2",), tmp_path / "ckpt", {"run": 2})
    other = wiring.begin()
    assert other.start is None and other.state.step == 0 and other.state.run_id != begun.state.run_id
