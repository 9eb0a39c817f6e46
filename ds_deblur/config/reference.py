"""``ds-deblur config``: the config reference (``docs/config.md``), generated from the schema.

    ds-deblur config                          print the reference (markdown)
    ds-deblur config --write docs/config.md   write it
    ds-deblur config --check docs/config.md   exit 1 when the file differs from what the schema generates
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union, get_args, get_origin

from ds_deblur.config.checks import requirements
from ds_deblur.config.legacy import EARLIER_KEYS, IGNORED_KEYS, SPELLINGS
from ds_deblur.config.schema import Config, is_section, walk

HEADER = """# Config reference

<!-- Generated from ds_deblur/config/schema.py by `ds-deblur config --write docs/config.md`; edit the schema, not
this file (tests/config/test_reference.py fails when they differ). -->

Every key of the YAML config, by section, as `ds-deblur train --config FILE` reads it and `--set SECTION.KEY=VALUE`
overrides it. Limits are checked when the config loads (null skips them; on a list, a count of values applies to
the list and the other limits to each entry); an error names the key. **Fixed on resume**: the key shapes the
model, its inputs or the optimizer's parameter groups, so a resumed run must keep its value (`--init-weights`
starts a new run that may change it).
"""


def render() -> str:
    """The whole reference as markdown."""
    parts = [HEADER]
    for name, doc, cls in _sections(Config):
        keys = _own_keys(name, cls)
        if keys:
            parts.append(_key_table(name or "Top level", doc, keys))
    parts.append(_pairs("Other spellings of the original trainer",
                        "The original trainer's second names of a key, read as the canonical key (both given with "
                        "different values is an error naming both).", ("Spelling", "Read as"),
                        [(old, s.key + (" (with a warning)" if s.warn else "")) for old, s in SPELLINGS.items()]))
    parts.append(_pairs("Ignored keys", "Keys of the original trainer that mean nothing under DeepSpeed: they load "
                                        "with a warning that says why.", ("Key", "Why"), list(IGNORED_KEYS.items())))
    parts.append(_pairs("Key names in configs stored by earlier checkpoints",
                        "Checkpoints written by earlier ds_deblur versions store these names; resuming or inferring "
                        "from them reads each as the canonical key. YAML files and `--set` do not accept them (the "
                        "error suggests the canonical key).", ("Stored name", "Read as"), list(EARLIER_KEYS.items())))
    return "\n".join(parts)


def _sections(cls: type, name: str = "", doc: str = "") -> Iterator[tuple[str, str, type]]:
    """(dotted section name, doc, dataclass) of ``cls`` and every section below it, depth first."""
    yield name, doc, cls
    for f in fields(cls):
        if is_section(f):
            yield from _sections(f.default_factory, f"{name}.{f.name}" if name else f.name, f.metadata["doc"])


def _own_keys(name: str, cls: type) -> list[tuple[str, Any, Any]]:
    """The keys of section ``name`` itself, not those of its sub-sections."""
    prefix = f"{name}." if name else ""
    return [(key, f, hint) for key, f, hint in walk(cls, prefix) if "." not in key[len(prefix):]]


def _key_table(title: str, doc: str, keys: list[tuple[str, Any, Any]]) -> str:
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc[0].upper() + doc[1:] + ".", ""]
    lines += ["| Key | Type | Default | Limits | Fixed on resume | Meaning |", "|---|---|---|---|---|---|"]
    for key, f, hint in keys:
        default = f.default if f.default is not MISSING else f.default_factory()
        cells = [f"`{key}`", _type_name(hint), f"`{json.dumps(default)}`", _limits_text(hint, f.metadata["limits"]),
                 "yes" if f.metadata["fixed_on_resume"] else "", f.metadata["doc"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _pairs(title: str, text: str, head: tuple[str, str], rows: list[tuple[str, str]]) -> str:
    lines = [f"## {title}", "", text, "", f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| `{a}` | {_cell(b)} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def _type_name(hint: Any) -> str:
    if get_origin(hint) is Union:
        return " or ".join(_type_name(arg) for arg in get_args(hint))
    if get_origin(hint) is list:
        return f"list of {_type_name(get_args(hint)[0])}"
    return "null" if hint is type(None) else hint.__name__


def _limits_text(hint: Any, limits: dict) -> str:
    texts = ["required"] if limits.get("required") else []
    texts += [text for text, _ in requirements(hint, limits)]
    why = f" ({limits['why']})" if texts and "why" in limits else ""
    return "; ".join(texts) + why


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ds-deblur config", description="The config reference: every key with its type, default, limits, "
                                             "whether a resumed run must keep it, and its meaning; then the "
                                             "original trainer's other spellings and ignored keys. Generated from "
                                             "the schema (ds_deblur/config/schema.py); printed as markdown unless "
                                             "--write or --check is given.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", metavar="PATH", type=Path, help="write the reference to PATH (docs/config.md)")
    mode.add_argument("--check", metavar="PATH", type=Path,
                      help="exit 1 when PATH differs from what the schema generates (a test and CI check)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    text = render()
    if args.write is not None:
        try:
            args.write.parent.mkdir(parents=True, exist_ok=True)
            args.write.write_text(text)
        except OSError as err:
            print(f"ds-deblur config: cannot write {args.write}: {err}", file=sys.stderr)
            return 1
        print(f"wrote {args.write}")
    elif args.check is not None:
        problem = _check(args.check, text)
        if problem:
            print(f"ds-deblur config: {problem}", file=sys.stderr)
            return 1
        print(f"{args.check} is up to date")
    else:
        sys.stdout.write(text)
    return 0


def _check(path: Path, text: str) -> Optional[str]:
    """Why ``path`` is not the generated reference ``text`` (None when it is)."""
    try:
        current = path.read_text()
    except OSError as err:
        return f"cannot read {path}: {err}; generate it with `ds-deblur config --write {path}`"
    if current != text:
        return f"{path} is out of date with the config schema: regenerate it with `ds-deblur config --write {path}`"
    return None


if __name__ == "__main__":
    sys.exit(main())
