"""Loading YAML files into pydantic models, with errors that name the file, line and key path.

Every config file is validated on load, before any AWS call: an unknown key, a wrong type, a
missing field or a duplicate key gives one line such as
`config/orgrunner.yaml:4: concurrency: Input should be a valid integer (got 'many')`.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from orgrunner.errors import InputError

M = TypeVar("M", bound=BaseModel)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest node on `loc` that exists in the document."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line = pair[0].start_mark.line + 1  # the key's line: a block value starts on the next one
            node = pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 50
_REPR.maxlist = _REPR.maxdict = 4
_REPR.maxlevel = 2


def _short(value: Any) -> str:
    """A bounded rendering: an alias bomb or a huge value must not blow up the error line."""
    text = " ".join(_REPR.repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _part(part: int | str) -> str:
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def parse(text: str, source: str, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Validate YAML text against `model` (its validators see `context`); raise InputError with
    one readable line."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise InputError(f"{source}: invalid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of settings at the top, got {type(data).__name__}")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        path = ".".join(_part(p) for p in loc) or "(top)"
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        got = "" if err["type"] == "missing" else f" (got {_short(err.get('input'))})"
        more = f" [and {exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        message = " ".join(str(err["msg"]).split())
        raise InputError(f"{where}: {path}: {message}{got}{more}") from None


MAX_BYTES = 1024 * 1024  # a settings or task file is a few KB; /dev/zero or a 22 MB file is refused


def read_bounded(path: Path, what: str = "config file", limit: int = MAX_BYTES) -> str:
    """The file's text, refused (one line) when larger than `limit` bytes: read no further than that."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise InputError(f"{path}: {what} larger than {limit // (1024 * 1024)} MB: refused")
        return data.decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None


def load(path: Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    return parse(read_bounded(path), str(path), model, context)
