"""A plugin written in Python: word statistics, one shard per text.

Built with componentize-py against guest-sdk/wit (world `plugin`); it shows that
the WIT is language-neutral. See the README, "Other languages".

componentize-py bundles only the modules imported while the app module loads,
so every module used at run time is imported here, at the top level.
"""

import heapq  # noqa: F401 -- Counter.most_common imports it lazily; see below
import itertools
import json
import posixpath
from collections import Counter

import wit_world
from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import planner
from wit_world.imports import host
from wit_world.imports.types import (
    Cell_Boolean,
    Cell_Float,
    Cell_Integer,
    Cell_Text,
    FunctionInfo,
    Param,
    Shard,
)

FUNCTION = "pywords.count"


def shards(call):
    """The call's shards, made as the engine takes them (a generator)."""
    # `run` sees only its shard: the payload carries `top` too.
    top = call["top"]
    for i, text in enumerate(call["texts"]):
        yield Shard(key=[("text", Cell_Integer(i))], payload=json.dumps({"text": text, "top": top}), reads=[])
    for path in call["files"]:
        folder = posixpath.dirname(path)
        yield Shard(
            key=[("file", Cell_Text(path))],
            payload=json.dumps({"file": path, "top": top}),
            reads=[folder] if folder else [],
        )


class Shards(planner.Shards):
    """A plan in progress: the engine takes its shards a page at a time."""

    def __init__(self, shards):
        self.shards = shards

    def next(self, max: int) -> list[Shard]:
        return list(itertools.islice(self.shards, max))


class Planner(exports.Planner):
    def plan(self, function: str, args: str) -> planner.Shards:
        if function != FUNCTION:
            raise Err(f"unknown function `{function}`")
        call = json.loads(args)
        if call["top"] < 1:
            raise Err(f"`top` must be at least 1, not {call['top']}")
        return Shards(shards(call))


class WitWorld(wit_world.WitWorld):
    def describe(self) -> list[FunctionInfo]:
        return [
            FunctionInfo(
                name=FUNCTION,
                doc="Count the words of each text; one shard per text.",
                params=[
                    Param(name="texts", type="list<string>", default=None, doc="The texts to count."),
                    Param(name="top", type="int", default="2", doc="How many of the most frequent words to list."),
                    Param(
                        name="files",
                        type="list<string>",
                        default="[]",
                        doc="Text files below /data to count too, one shard each; a shard reads only its file's folder.",
                    ),
                ],
            )
        ]

    def run(self, function: str, shard: Shard, out: host.TableWriter) -> None:
        work = json.loads(shard.payload)
        top = work["top"]
        if "file" in work:
            try:
                with open(posixpath.join("/data", work["file"]), encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise Err(f"cannot read `{work['file']}`: {e}")
        else:
            text = work["text"]
        words = [w.strip(".,;:!?\"'()").lower() for w in text.split()]
        words = [w for w in words if w]
        if not words:
            raise Err("the text has no words")
        host.log(host.Level.INFO, f"{len(words)} words")
        counts = Counter(words)
        host.progress(1, 1)
        out.push_row(
            [
                shard.key[0],
                ("words", Cell_Integer(len(words))),
                ("distinct", Cell_Integer(len(counts))),
                ("mean_length", Cell_Float(sum(map(len, words)) / len(words))),
                ("top", Cell_Text(" ".join(f"{w}:{n}" for w, n in counts.most_common(top)))),
                ("has_digits", Cell_Boolean(any(c.isdigit() for c in text))),
            ]
        )
