"""A plugin written in Python: word statistics, one shard per text.

Built with componentize-py against guest-sdk/wit (world `plugin`); it shows that
the WIT is language-neutral. See the README, "Other languages".

componentize-py bundles only the modules imported while the app module loads,
so every module used at run time is imported here, at the top level.
"""

import heapq  # noqa: F401 -- Counter.most_common imports it lazily; see below
import json
from collections import Counter

import wit_world
from componentize_py_types import Err
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


class WitWorld(wit_world.WitWorld):
    def describe(self) -> list[FunctionInfo]:
        return [
            FunctionInfo(
                name=FUNCTION,
                doc="Count the words of each text; one shard per text.",
                params=[
                    Param(name="texts", type="list<string>", default=None, doc="The texts to count."),
                    Param(name="top", type="int", default="2", doc="How many of the most frequent words to list."),
                ],
            )
        ]

    def plan(self, function: str, args: str) -> list[Shard]:
        if function != FUNCTION:
            raise Err(f"unknown function `{function}`")
        call = json.loads(args)
        if call["top"] < 1:
            raise Err(f"`top` must be at least 1, not {call['top']}")
        return [
            Shard(key=[("text", Cell_Integer(i))], payload=json.dumps(text))
            for i, text in enumerate(call["texts"])
        ]

    def run(self, function: str, args: str, shard: Shard, out: host.TableWriter) -> None:
        top = json.loads(args)["top"]
        text = json.loads(shard.payload)
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
