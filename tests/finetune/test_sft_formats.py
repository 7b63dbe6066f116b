"""SFT record formats and the loss masks read off the real chat templates of the families, token by token."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from frontier.config import load_params
from frontier.errors import ConfigError, DataError
from frontier.finetune.chat_masks import ChatTokens
from frontier.finetune.dataset import encode, encode_all, encode_record, read_records, split_file
from frontier.finetune.sft_formats import Parts
from frontier.model.loss import IGNORE_INDEX
from tests.model.families import build_tokenizer

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
TURNS = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "Six, of course."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]
ANSWERS = [m["content"] for m in TURNS if m["role"] == "assistant"]

# family -> (does the template take a system message, how it writes an assistant turn: content + end-of-turn)
FAMILIES = {
    "qwen2": (True, lambda c: c + "<|im_end|>"),  # ChatML
    "llama3": (True, lambda c: c + "<|eot_id|>"),
    "mistral": (True, lambda c: " " + c + " </s>"),  # v0.3's template drops the system message
    "gemma2": (False, lambda c: c + "<end_of_turn>"),  # raises on a system message (tested below)
    "gemma3": (True, lambda c: c + "<end_of_turn>"),  # folds the system message into the first user turn
    "phi3": (True, lambda c: c + "<|end|>"),
}

# ChatML as Qwen2.5 renders it when a system message is given, with the assistant's text marked for
# transformers' assistant-token masks
CHATML_GENERATION = (
    "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.role == 'assistant' %}{% generation %}{{- message.content + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}{%- else %}{{- message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def runs(ids: np.ndarray, learned: np.ndarray, tokenizer) -> list[str]:
    """The learned tokens, decoded run by run."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], learned.astype(np.int8), [0]])))
    return [tokenizer.decode(ids[a:b].tolist()) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def write_jsonl(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def conversation(family: str) -> list[dict[str, str]]:
    return [SYSTEM, *TURNS] if FAMILIES[family][0] else list(TURNS)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_assistant_turn_is_learned_with_its_end_of_turn_token(family, tmp_path):
    tokenizer = build_tokenizer(family)
    closed = FAMILIES[family][1]
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": conversation(family)})
    rendered = tokenizer.apply_chat_template(conversation(family), tokenize=False)

    (rec,) = read_records(path, tokenizer, "assistant")
    assert isinstance(rec, ChatTokens)
    # the whole conversation, tokenized once, and nothing appended (no eos_token after the template's turn end)
    assert tokenizer.decode(rec.ids.tolist()) == rendered
    assert runs(rec.ids, rec.learned, tokenizer) == [closed(a) for a in ANSWERS]

    (last,) = read_records(path, tokenizer, "last_assistant")
    assert np.array_equal(last.ids, rec.ids)
    assert runs(last.ids, last.learned, tokenizer) == [closed(ANSWERS[-1])]

    (every,) = read_records(path, tokenizer, "all")
    assert np.array_equal(every.ids, rec.ids) and every.learned.all()

    # the example's targets are exactly those tokens, shifted: position j predicts learned token j + 1
    ex = encode_record(tokenizer, rec, max_len=10_000)
    kept = ex.targets[ex.targets != IGNORE_INDEX]
    assert np.array_equal(kept, rec.ids[1:][rec.learned[1:]])
    assert tokenizer.decode(kept.tolist()) == "".join(closed(a) for a in ANSWERS)


def test_a_generation_marked_template_gives_the_same_masks_as_the_rendering_difference(tmp_path):
    plain, marked = build_tokenizer("qwen2"), build_tokenizer("qwen2")
    marked.chat_template = CHATML_GENERATION
    msgs = [SYSTEM, *TURNS]
    assert marked.apply_chat_template(msgs, tokenize=False) == plain.apply_chat_template(msgs, tokenize=False)
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": msgs})
    for train_on in ("assistant", "last_assistant", "all"):
        (a,), (b,) = read_records(path, plain, train_on), read_records(path, marked, train_on)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.learned, b.learned), train_on


def test_the_plain_fallback_closes_every_assistant_turn_with_eos(tmp_path):
    tokenizer = build_tokenizer("gpt2")  # no chat template
    eos = tokenizer.eos_token
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": [SYSTEM, *TURNS]})
    (rec,) = read_records(path, tokenizer)
    assert isinstance(rec, Parts)
    ex = encode_record(tokenizer, rec, max_len=10_000)
    ids = np.append(ex.input_ids, ex.targets[-1])  # the last token (EOS) is learned
    assert runs(ids, np.append(False, ex.targets != IGNORE_INDEX), tokenizer) == [a + eos for a in ANSWERS]
    full = tokenizer.decode(ids.tolist())
    assert full.startswith("### System:\nYou answer") and "### Assistant:\nIt is 4." + eos + "\n\n### User:" in full
    (last,) = read_records(path, tokenizer, "last_assistant")
    ex_last = encode_record(tokenizer, last, max_len=10_000)
    assert np.array_equal(ex_last.input_ids, ex.input_ids)  # the same text; fewer tokens learned
    assert tokenizer.decode(ex_last.targets[ex_last.targets != IGNORE_INDEX].tolist()) == ANSWERS[-1] + eos


def test_pairs_text_and_conversational_prompt_completion(tmp_path):
    tokenizer = build_tokenizer("qwen2")
    eos = tokenizer.eos_token_id
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        {"prompt": "def f(x):\n", "completion": "    return x\n"},
        {"prompt": "def f(x):\n", "response": "    return x\n"},
        {"text": "x = 1\n"},
        {"prompt": [SYSTEM, *TURNS[:3]], "completion": TURNS[3:4]},
    )
    completion, response, text, chat = read_records(path, tokenizer)
    assert completion == response == ("def f(x):\n", "    return x\n")  # a pair unpacks as (prompt, response)
    a, b = encode_record(tokenizer, completion, 64), encode(tokenizer, "def f(x):\n", "    return x\n", 64)
    assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.targets, b.targets)
    assert b.targets[-1] == eos and (b.targets == IGNORE_INDEX).sum() == len(tokenizer("def f(x):\n")["input_ids"]) - 1
    t = encode_record(tokenizer, text, 64)
    assert t.targets.tolist() == tokenizer("x = 1\n")["input_ids"][1:] + [eos]  # every token after the first
    assert runs(chat.ids, chat.learned, tokenizer) == ["Six, of course.<|im_end|>"]  # the prompt's turn is not
    (everything,) = read_records(
        write_jsonl(tmp_path / "p.jsonl", {"prompt": "ab", "completion": "cd"}), tokenizer, "all"
    )
    ex = encode_record(tokenizer, everything, 64)
    assert (ex.targets != IGNORE_INDEX).all()  # all: the prompt is learned too


def test_parquet_reads_as_jsonl_does(tmp_path):
    tokenizer = build_tokenizer("llama3")
    records = [{"messages": [SYSTEM, *TURNS]}, {"messages": TURNS[:2]}]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
    write_jsonl(tmp_path / "train.jsonl", *records)
    from_parquet = read_records(tmp_path / "train.parquet", tokenizer)
    from_jsonl = read_records(tmp_path / "train.jsonl", tokenizer)
    for p, j in zip(from_parquet, from_jsonl, strict=True):
        assert np.array_equal(p.ids, j.ids) and np.array_equal(p.learned, j.learned)
    pairs = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
    assert read_records(tmp_path / "pairs.parquet", tokenizer) == [("a", "b"), ("c", "d")]
    assert split_file(tmp_path, "train").name == "train.jsonl"  # JSONL first where both exist
    (tmp_path / "train.jsonl").unlink()
    assert split_file(tmp_path, "train").name == "train.parquet"


def test_a_saved_dataset_folder_reads_as_jsonl_does(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed")
    tokenizer = build_tokenizer("phi3")
    records = [{"messages": [SYSTEM, *TURNS]}, {"messages": TURNS[:2]}]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "train"))
    from_folder = read_records(tmp_path / "train", tokenizer)
    from_jsonl = read_records(write_jsonl(tmp_path / "train.jsonl", *records), tokenizer)
    for f, j in zip(from_folder, from_jsonl, strict=True):
        assert np.array_equal(f.ids, j.ids) and np.array_equal(f.learned, j.learned)
    assert split_file(tmp_path, "train").name == "train.jsonl"
    (tmp_path / "train.jsonl").unlink()
    assert split_file(tmp_path, "train") == tmp_path / "train"

    bad = [{"messages": TURNS[:2]}, {"messages": TURNS[:1]}]
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad"))
    assert one_line_error(tmp_path / "bad", tokenizer).startswith(f"{tmp_path / 'bad'}:row 2: the last message")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "dict"))
    assert "a DatasetDict with splits ['train']; point at one split's folder" in one_line_error(
        tmp_path / "dict", tokenizer
    )
    datasets.Dataset.from_list([{"q": "a"}]).save_to_disk(str(tmp_path / "q"))
    assert "expected column(s) messages or" in one_line_error(tmp_path / "q", tokenizer)


def test_truncation_keeps_the_learned_tokens_that_fit_and_drops_examples_with_none(tmp_path):
    tokenizer = build_tokenizer("qwen2")
    (rec,) = read_records(write_jsonl(tmp_path / "c.jsonl", {"messages": [SYSTEM, *TURNS]}), tokenizer)
    first = int(np.flatnonzero(rec.learned)[0])
    ex = encode_record(tokenizer, rec, max_len=first + 2)
    assert ex.input_ids.size == first + 2 and (ex.targets != IGNORE_INDEX).sum() == 3
    assert encode_record(tokenizer, rec, max_len=first - 1) is None
    with pytest.raises(DataError, match="no record has a token to learn within 4 tokens"):
        encode_all(tokenizer, [rec], 4, tmp_path)


# -- attacks: each one line naming file and line --------------------------------------------------------------


def one_line_error(path: Path, tokenizer, train_on: str = "assistant") -> str:
    with pytest.raises(DataError) as info:
        read_records(path, tokenizer, train_on)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"messages": [TURNS[0], TURNS[0], TURNS[1]]}, r"roles out of order: message 1 is 'user' after 'user'"),
        ({"messages": TURNS[1:2]}, r"roles out of order: message 0 is 'assistant' first"),
        ({"messages": [TURNS[0], SYSTEM, TURNS[1]]}, r"message 1 is 'system' after 'user'"),
        ({"messages": TURNS[:1]}, r"the last message must be the assistant's"),
        ({"messages": []}, r'messages: expected a non-empty list of \{"role", "content"\} messages'),
        ({"messages": "hi"}, r"messages: expected a non-empty list"),
        ({"messages": [TURNS[0], {"role": "assistant", "content": 4}]}, r"messages\[1\] \(assistant\): content is int"),
        ({"messages": [TURNS[0], {"role": "bot", "content": "x"}]}, r"messages\[1\]: role 'bot'; expected one of"),
        ({"messages": [TURNS[0], ["assistant", "x"]]}, r"messages\[1\]: expected an object with role and content"),
        ({"prompt": "a", "completion": ["b"]}, r"prompt and completion: expected two strings or two lists"),
        ({"prompt": [TURNS[0]], "completion": [{"role": "assistant"}]}, r"completion\[0\] \(assistant\): content is"),
        ({"text": 3}, r"text: expected a string, got int"),
        ({"question": "a", "answer": "b"}, r"expected one of .*messages.*; found keys \['answer', 'question'\]"),
    ],
)
def test_a_malformed_record_is_one_line_naming_file_and_line(record, expected, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", {"text": "fine"}, record)
    message = one_line_error(path, build_tokenizer("qwen2"))
    assert message.startswith(f"{path}:2: ")
    assert pytest.importorskip("re").search(expected, message), message


def test_a_record_the_template_cannot_render_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": TURNS}, {"messages": [SYSTEM, *TURNS]})
    message = one_line_error(path, build_tokenizer("gemma2"))
    assert (
        message.startswith(f"{path}:2: the chat template cannot render it") and "System role not supported" in message
    )


def test_a_template_that_rewrites_earlier_turns_asks_for_generation_markers(tmp_path):
    # Qwen3's template renders an assistant turn with an empty <think> block while it is the last one, and
    # without once the conversation goes on: no difference can be read off for the earlier turns
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": TURNS})
    tokenizer = build_tokenizer("qwen3")
    message = one_line_error(path, tokenizer)
    assert message.startswith(f"{path}:1: ") and "{% generation %}" in message
    (last,) = read_records(path, tokenizer, "last_assistant")  # the last turn alone is well defined
    assert runs(last.ids, last.learned, tokenizer) == ["<think>\n\n</think>\n\n" + ANSWERS[-1] + "<|im_end|>"]


def test_a_train_on_typo_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"finetune.train_on: got 'assistnat', expected one of .*'assistant'"):
        load_params(None, ["finetune.train_on=assistnat"])
    path = write_jsonl(tmp_path / "chat.jsonl", {"messages": TURNS})
    assert "train_on: 'assistants'; expected one of assistant, last_assistant, all" in one_line_error(
        path, build_tokenizer("qwen2"), "assistants"
    )


def test_a_parquet_file_without_a_known_column_or_unreadable_is_one_line(tmp_path):
    tokenizer = build_tokenizer("qwen2")
    pq.write_table(pa.Table.from_pylist([{"question": "a", "answer": "b"}]), tmp_path / "qa.parquet")
    message = one_line_error(tmp_path / "qa.parquet", tokenizer)
    assert "expected column(s) messages or prompt+completion or prompt+response or text" in message
    assert "['question', 'answer']" in message
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in one_line_error(tmp_path / "junk.parquet", tokenizer)
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": None}]), tmp_path / "null.parquet")
    assert one_line_error(tmp_path / "null.parquet", tokenizer).startswith(f"{tmp_path / 'null.parquet'}:row 1: ")


def test_a_directory_or_missing_file_is_one_line(tmp_path):
    tokenizer = build_tokenizer("qwen2")
    (tmp_path / "saved").mkdir()
    try:
        import datasets  # noqa: F401

        expected = "not a dataset saved with save_to_disk"
    except ImportError:
        expected = "needs the `datasets` package, which is not installed"
    assert expected in one_line_error(tmp_path / "saved", tokenizer)
    assert "not found" in one_line_error(tmp_path / "missing.jsonl", tokenizer)
    assert "no records" in one_line_error(write_jsonl(tmp_path / "empty.jsonl"), tokenizer)
