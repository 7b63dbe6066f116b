"""SFT records: the file formats a fine-tune reads, the record shapes, and what of each record is learned.

Files: JSONL (a record a line), Parquet (a record a row, the keys below as columns), or a `datasets` Dataset
saved with save_to_disk (a folder; needs the `datasets` package). Records:

  {"messages": [{"role": ..., "content": ...}, ...]}   a chat: an optional system message, then user and
                                                       assistant turns alternating, the last the assistant's
  {"prompt": str, "completion": str}                   the completion is learned, closed by EOS
  {"prompt": str, "response": str}                     the same (what the sft-data stage writes)
  {"prompt": [messages], "completion": [messages]}     a chat whose completion's assistant turns are learned
  {"text": str}                                        every token learned, closed by EOS

`train_on` (finetune.train_on) picks what of a chat is learned: ``assistant`` every assistant turn (the
default), ``last_assistant`` the last one only, ``all`` every token. A chat is rendered by the tokenizer's
chat template and its masks read off the template (frontier.finetune.chat_masks), each learned turn closed
by the template's own end-of-turn token; a tokenizer without a template renders "### Role:" headers and
closes each assistant turn with EOS. For prompt/completion text, ``all`` learns the prompt too.

A record that is malformed, or that the template cannot render, is one DataError naming file and line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from frontier.errors import DataError
from frontier.finetune.chat_masks import ChatTokens, TemplateError, chat_tokens
from frontier.utils.jsonl import iter_jsonl

TRAIN_ON = ("assistant", "last_assistant", "all")
ROLES = ("system", "user", "assistant")
SHAPES = ('{"messages": [{"role", "content"}, ...]}', '{"prompt", "completion"}', '{"prompt", "response"}', '{"text"}')
COLUMNS = (("messages",), ("prompt", "completion"), ("prompt", "response"), ("text",))
ORDER = "expected an optional system message, then user and assistant turns alternating, the last the assistant's"


class Parts(tuple):
    """Texts tokenized one by one (no special tokens added) and concatenated. `learned[i]`: text i's tokens are
    learned; `eos[i]`: EOS follows text i (learned with it). By default the texts alternate (masked, learned,
    ...) and each learned one is closed by EOS, so a pair is ``Parts((prompt, response))`` and unpacks as one."""

    learned: tuple[bool, ...]
    eos: tuple[bool, ...]

    def __new__(
        cls, texts: Sequence[str], learned: Sequence[bool] | None = None, eos: Sequence[bool] | None = None
    ) -> Parts:
        self = super().__new__(cls, texts)
        default = tuple(i % 2 == 1 for i in range(len(self)))
        self.learned = tuple(learned) if learned is not None else default
        self.eos = tuple(eos) if eos is not None else self.learned
        return self


Record = Parts | ChatTokens


def check_train_on(train_on: str) -> None:
    if train_on not in TRAIN_ON:
        raise DataError(f"train_on: {train_on!r}; expected one of {', '.join(TRAIN_ON)}")


def _messages(value: Any, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f'{what}: expected a non-empty list of {{"role", "content"}} messages')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise ValueError(f"{what}[{i}]: expected an object with role and content, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{what}[{i}]: role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{what}[{i}] ({role}): content is {type(content).__name__}; expected a string")
        out.append({"role": role, "content": content})
    return out


def _check_order(messages: list[dict[str, str]]) -> None:
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            k = i + len(messages) - len(turns)
            after = f" after {messages[k - 1]['role']!r}" if k else " first"
            raise ValueError(f"roles out of order: message {k} is {m['role']!r}{after}; {ORDER}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"the last message must be the assistant's (the response to learn); {ORDER}")


def _learn(messages: list[dict[str, str]], train_on: str, first: int) -> list[int] | None:
    """Indices of the assistant messages to learn (from index `first` on); None: every token."""
    if train_on == "all":
        return None
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i >= first]
    return turns[-1:] if train_on == "last_assistant" else turns


def _plain(messages: list[dict[str, str]], learn: list[int] | None) -> Parts:
    """The fallback without a chat template: "### Role:" headers, each assistant turn closed by EOS."""
    texts, learned, eos, text = [], [], [], ""
    for i, m in enumerate(messages):
        text += f"### {m['role'].capitalize()}:\n"
        if m["role"] == "assistant":
            texts += [text, m["content"]]
            learned += [learn is None, learn is None or i in learn]
            eos += [False, True]
            text = "\n\n"
        else:
            text += f"{m['content']}\n\n"
    return Parts(texts, learned, eos)


def _chat(messages: list[dict[str, str]], tokenizer: Any, train_on: str, first: int = 0) -> Record:
    _check_order(messages)
    learn = _learn(messages, train_on, first)
    if not getattr(tokenizer, "chat_template", None):
        return _plain(messages, learn)
    return chat_tokens(tokenizer, messages, learn)


def _is(rec: dict[str, Any], *keys: str) -> bool:
    return all(rec.get(k) is not None for k in keys)


def _record(rec: dict[str, Any], tokenizer: Any, train_on: str) -> Record:
    if _is(rec, "messages"):
        return _chat(_messages(rec["messages"], "messages"), tokenizer, train_on)
    for second in ("completion", "response"):
        if not _is(rec, "prompt", second):
            continue
        prompt, answer = rec["prompt"], rec[second]
        if isinstance(prompt, str) and isinstance(answer, str):
            return Parts((prompt, answer), learned=(train_on == "all", True), eos=(False, True))
        if isinstance(prompt, list) and isinstance(answer, list):
            head = _messages(prompt, "prompt")
            return _chat(head + _messages(answer, second), tokenizer, train_on, first=len(head))
        raise ValueError(
            f"prompt and {second}: expected two strings or two lists of messages, got "
            f"{type(prompt).__name__} and {type(answer).__name__}"
        )
    if _is(rec, "text"):
        if not isinstance(rec["text"], str):
            raise ValueError(f"text: expected a string, got {type(rec['text']).__name__}")
        return Parts((rec["text"],), learned=(True,), eos=(True,))
    raise ValueError(f"expected one of {', '.join(SHAPES)}; found keys {sorted(rec)}")


def _check_columns(path: Path, names: Sequence[str]) -> None:
    if not any(all(c in names for c in cols) for cols in COLUMNS):
        want = " or ".join("+".join(cols) for cols in COLUMNS)
        raise DataError(f"{path}: expected column(s) {want}; the file has {list(names)}")


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    _check_columns(path, file.schema_arrow.names)
    row = 0
    for batch in file.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield f"{path}:row {row}", rec


def _saved_dataset_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """The rows of a `datasets` Dataset saved with save_to_disk (one split)."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{path}: a directory (a `datasets` save_to_disk folder?) needs the `datasets` package, which is not "
            "installed; install it, or export the data with Dataset.to_json or to_parquet"
        ) from None
    try:
        data = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError, or whatever a foreign folder makes datasets raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({type(exc).__name__}: {first})") from None
    if isinstance(data, datasets.DatasetDict):
        raise DataError(f"{path}: a DatasetDict with splits {sorted(data)}; point at one split's folder")
    _check_columns(path, data.column_names)
    for row, rec in enumerate(data, 1):
        yield f"{path}:row {row}", rec


def iter_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("file:line", record)`` of a JSONL or Parquet file, or a `datasets` folder saved with save_to_disk."""
    path = Path(path)
    if path.is_dir():
        return _saved_dataset_rows(path)
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    return iter_jsonl(path, "the sft-data stage writes train.jsonl and heldout.jsonl")


def read_sft_records(path: Path, tokenizer: Any, train_on: str = "assistant") -> list[Record]:
    """Every record of `path`, each a Parts or ChatTokens; DataError naming the line that is wrong."""
    check_train_on(train_on)
    out = []
    for where, rec in iter_records(path):
        try:
            out.append(_record(rec, tokenizer, train_on))
        except (ValueError, TemplateError) as exc:
            raise DataError(f"{where}: {exc}") from None
    if not out:
        raise DataError(f"{path}: no records")
    return out
