"""The decoder's prompt: a template filled from each row's columns, read after the prefix.

    generate.prompt = "Question: {question} Answer:"
    row -> "Question: how many red shapes? Answer:" -> the decoder's tokenizer -> ids

The filled text is tokenized by the decoder's own tokenizer (TextTargets) and embedded by the
decoder, after the fused prefix and before the target: the LLaVA layout, where an instruction or
question is text the language model reads itself. A column named in the template need not be an
encoder input; an empty cell fills in as nothing.
"""
from __future__ import annotations

from ..config import prompt_columns, prompt_parts
from ..data.manifest import Table, is_missing
from ..errors import InputError


def fill(template: str, values: dict) -> str:
    """The template with each {column} replaced by its value (a missing value by nothing)."""
    out = []
    for literal, field in prompt_parts(template):
        out.append(literal)
        if field is not None:
            v = values.get(field)
            out.append("" if v is None or is_missing(v) else str(v))
    return "".join(out)


def check_columns(template: str, table: Table):
    for c in prompt_columns(template):
        if c not in table.df.columns:
            raise InputError(f"generate.prompt names column '{c}', which the table does not have; it has: "
                             f"{', '.join(map(str, table.df.columns))}", table=table.name, column=c)


def row_prompts(template: str, table: Table, rows: list[int]) -> list[str]:
    """The filled prompt of each table row in `rows`."""
    check_columns(template, table)
    cols = prompt_columns(template)
    return [fill(template, {c: table.df.at[r, c] for c in cols}) for r in rows]
