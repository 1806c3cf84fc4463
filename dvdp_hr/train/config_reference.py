"""The configuration reference (docs/config-reference.md), generated from the config dataclasses.

Every key of `RunConfig` is listed with its dotted name (as written in YAML presets and `key=value`
overrides), its annotated type, its default (rendered as YAML) and a description assembled from the
source comments: the contiguous comment lines right above the field, then the comment on its line.
A section's description is its field comment in the parent class plus the class docstring.

    python -m dvdp_hr.train.config_reference                  # print the reference
    python -m dvdp_hr.train.config_reference --out PATH       # write it
    python -m dvdp_hr.train.config_reference --check PATH     # exit 1 if PATH is out of date
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import pathlib
import sys
import textwrap
import tokenize
import typing
from typing import Any, Iterator, NamedTuple

import yaml

from dvdp_hr.train.config import RunConfig
from dvdp_hr.train.confutil import _dataclass_type

DEFAULT_PATH = "docs/config-reference.md"
COMMAND = "python -m dvdp_hr.train.config_reference"


class Row(NamedTuple):
    key: str
    type: str
    default: str
    description: str


# ------------------------------------------------------------------ source comments

@functools.lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comments in `cls`'s source: the contiguous comment lines directly
    above the field, then the comments on the field's own (logical) line, verbatim, joined by
    spaces."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[str, str] = {}
    above: list[str] = []  # comment-only lines since the last statement or blank line
    line: list[tokenize.TokenInfo] = []  # the tokens of the current logical line
    depth = 0  # indentation level: 1 = the class body (not a method's)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            depth += 1 if tok.type == tokenize.INDENT else -1
        elif tok.type == tokenize.COMMENT and not line:
            above.append(_comment_text(tok.string))
        elif tok.type == tokenize.NL and not line:
            if not tok.line.strip():
                above = []  # a blank line ends the comment block above a field
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            name = _field_name(line) if depth == 1 else None
            if name is not None:
                trailing = [_comment_text(t.string) for t in line if t.type == tokenize.COMMENT]
                comments[name] = " ".join(above + trailing)
            above, line = [], []
        elif tok.type != tokenize.NL:
            line.append(tok)
    return comments


def _comment_text(comment: str) -> str:
    return comment.lstrip("#").strip()


def _field_name(line: list[tokenize.TokenInfo]) -> str | None:
    """The name of an annotated class attribute (`name: type [= default]`), else None."""
    code = [t for t in line if t.type != tokenize.COMMENT]
    if len(code) >= 2 and code[0].type == tokenize.NAME and code[1].string == ":":
        return code[0].string
    return None


def class_docstring(cls: type) -> str:
    """The docstring written in `cls`'s body, on one line ("" if none; dataclasses invent one)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    return " ".join((ast.get_docstring(node) or "").split())


# ------------------------------------------------------------------ types and defaults

def type_text(annotation: Any) -> str:
    """The annotation as written: the string itself under `from __future__ import annotations`."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_value(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def yaml_text(value: Any) -> str:
    """`value` as it would appear in a YAML preset (flow style, one line)."""
    if value is dataclasses.MISSING:
        return "(required)"
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("...").strip()


# ------------------------------------------------------------------ the walk

def section_rows(cls: type, prefix: str) -> Iterator[Row]:
    """One row per field of dataclass `cls`, depth first; a nested section gets a row of its own
    (type, default, docstring) followed by the rows of its fields."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        sub = _dataclass_type(hints[f.name])
        description = comments.get(f.name, "")
        if sub is not None:
            description = _join(description, class_docstring(sub))
        yield Row(key, type_text(f.type), yaml_text(default_value(f)), description)
        if sub is not None:
            yield from section_rows(sub, key + ".")


def sections(root: type = RunConfig) -> Iterator[tuple[str, str, list[Row]]]:
    """(name, description, rows) for each top-level section of `root`."""
    hints = typing.get_type_hints(root)
    comments = field_comments(root)
    for f in dataclasses.fields(root):
        cls = _dataclass_type(hints[f.name])
        if cls is None:
            raise TypeError(f"{root.__name__}.{f.name} is not a section (a dataclass)")
        description = _join(comments.get(f.name, ""), class_docstring(cls))
        yield f.name, description, list(section_rows(cls, f.name + "."))


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------ markdown

def _prose(text: str) -> str:
    """Comment text as markdown: `<` escaped, or `<name>` would be read as an HTML tag."""
    return text.replace("<", "\\<")


def _cell(text: str, code: bool = False) -> str:
    """A table cell: `|` escaped; a code span, or prose."""
    text = text.replace("|", "\\|")
    if code:
        return f"`{text}`" if text else text
    return _prose(text)


def render(root: type = RunConfig) -> str:
    """The whole reference as markdown."""
    out = [
        "# Configuration reference",
        "",
        f"Generated from the config dataclasses by `{COMMAND} --out {DEFAULT_PATH}`; "
        "do not edit it by hand: change the comments in the dataclasses and regenerate. "
        "Keys are dotted as in YAML presets and `key=value` overrides; defaults are shown as YAML.",
    ]
    for name, description, rows in sections(root):
        out += ["", f"## {name}", ""]
        if description:
            out += [_prose(description), ""]
        out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        out += [f"| {_cell(r.key, True)} | {_cell(r.type, True)} | {_cell(r.default, True)} | "
                f"{_cell(r.description)} |" for r in rows]
    return "\n".join(out) + "\n"


def check(path: str) -> int:
    """0 if the file at `path` holds what `render` generates, else 1 with a message on stderr."""
    file = pathlib.Path(path)
    if file.is_file() and file.read_text(encoding="utf-8") == render():
        print(f"{path} is up to date.")
        return 0
    print(f"{path} is out of date: run `{COMMAND} --out {path}`", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", metavar="PATH", help="write the reference to PATH")
    group.add_argument("--check", metavar="PATH",
                       help="exit 1 if PATH differs from the generated reference")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(), encoding="utf-8", newline="\n")
        print(f"wrote {args.out}")
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
