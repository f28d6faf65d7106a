"""``m2msec gateway --config FILE``: the gateway's options in one TOML file.

The file's schema is the ``m2msec gateway`` argparse parser itself (:func:`file_options`): every long option of the
parser is a key, spelled as the option without its ``--`` (``max-connections = 500``, ``psk-table = "keys.toml"``),
with the option's type, choices and default; no second table of defaults exists. The file is flat (no TOML tables).
Keys with underscores are refused with the hyphenated spelling in the message (D237): one spelling per option, the
one ``--help`` and the docs show. ``store_true`` options take TOML ``true`` / ``false``, numbers take TOML numbers,
paths are strings, relative to the folder of the configuration file (D238), and a string option also takes a TOML
integer (``workers = 4``).

Options given on the command line override the file (:func:`track_given` records which were given explicitly); of
the options of one mutually exclusive group (``--psk-table`` / ``--db``), one given on the command line drops the
file's. Every error is one :class:`~m2msec.errors.ConfigurationError` line naming the file, the key and the reason.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError

__all__ = ["GIVEN", "NOT_IN_FILE", "apply_config_file", "file_options", "from_file", "name_file_key",
           "reference_table", "track_given"]

#: the Namespace attribute holding the dests given on the command line, with their values (a dict)
GIVEN = "given_options"
#: the attribute naming the options the configuration file set (dest -> key)
FROM_FILE = "file_options"
#: long options that are not keys of the file: they say which file to read and what to do with it
NOT_IN_FILE = frozenset({"--help", "--config", "--check-config"})

#: docs/decisions.md D237: keys are spelled as the options, with hyphens; ``max_connections`` is refused (with the
#: hyphenated spelling in the message) rather than read as a second spelling of one key
ACCEPT_UNDERSCORES = False
#: docs/decisions.md D238: a relative path in the file is relative to the file's folder, not the working directory
RELATIVE_TO_CONFIG_FILE = True

_BOOL_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction)
_TRACKED: dict[type[argparse.Action], type[argparse.Action]] = {}


def _tracking(cls: type[argparse.Action]) -> type[argparse.Action]:
    """A subclass of ``cls`` that records, in the namespace, that its option was given."""
    if cls not in _TRACKED:
        def call(self: argparse.Action, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            cls.__call__(self, parser, namespace, values, option_string)
            given: dict[str, Any] = namespace.__dict__.setdefault(GIVEN, {})
            given[self.dest] = getattr(namespace, self.dest)

        _TRACKED[cls] = type(cls.__name__, (cls,), {"__call__": call})
    return _TRACKED[cls]


def track_given(parser: argparse.ArgumentParser) -> None:
    """Make every option of ``parser`` record itself in ``namespace.given_options`` when given (call once the
    parser has all its options: the options added later are not tracked)."""
    for action in parser._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            action.__class__ = _tracking(type(action))


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys of the configuration file: each long option of ``parser`` without its ``--``, to its action."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--") and o not in NOT_IN_FILE]
        if longs:
            keys[longs[0][2:]] = action
    return keys


def _kind(action: argparse.Action) -> str:
    if isinstance(action, _BOOL_ACTIONS):
        return "boolean"
    if action.type is int:
        return "integer"
    if action.type is float:
        return "number"
    if action.type is Path:
        return "path"
    return "string"


def _toml_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "a table"}
    return names.get(type(value), f"a {type(value).__name__}")


def _convert(action: argparse.Action, value: object, folder: Path) -> Any:
    """The value of ``action``'s dest for the TOML ``value``; raises ValueError with the reason."""
    kind = _kind(action)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, not {_toml_type(value)}")
        if isinstance(action, argparse._StoreTrueAction):
            return value
        if isinstance(action, argparse._StoreFalseAction):
            return not value
        return action.const if value else action.default
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, not {_toml_type(value)}")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, not {_toml_type(value)}")
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool) and kind == "string":
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {_toml_type(value)}")
    if kind == "path":
        if not value:
            raise ValueError("expected a file name, not an empty string")
        path = Path(value).expanduser()
        return path if path.is_absolute() else folder / path
    convert = action.type
    if callable(convert):
        try:
            value = convert(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(str(exc)) from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


#: D241: a configuration file that group or others may write is refused (it decides keys, backends, policies)
CONFIG_FILE_FORBIDDEN_MODE = stat.S_IWGRP | stat.S_IWOTH


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if mode & CONFIG_FILE_FORBIDDEN_MODE:
                raise ConfigurationError(f"{path}: the configuration file may be written by group or others (mode "
                                         f"{stat.S_IMODE(mode):04o}): it names the keys, backends and policies the "
                                         "gateway uses; run chmod go-w on it")
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the configuration file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: the configuration file is not UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not a valid TOML file: {exc}") from None


def from_file(parser: argparse.ArgumentParser, path: Path) -> dict[str, tuple[str, Any]]:
    """The options ``path`` sets: dest -> (key, value), checked against ``parser``. Raises ConfigurationError."""
    keys = file_options(parser)
    folder = path.parent if RELATIVE_TO_CONFIG_FILE else Path.cwd()
    values: dict[str, tuple[str, Any]] = {}
    for key, raw in _read(path).items():
        action = keys.get(key.replace("_", "-") if ACCEPT_UNDERSCORES else key)
        if action is None:
            hint = key.replace("_", "-")
            reason = (f"unknown key (keys are the option names with hyphens: {hint!r})" if hint in keys
                      else "unknown key")
            raise ConfigurationError(f"{path}: {key!r}: {reason}")
        try:
            values[action.dest] = (key, _convert(action, raw, folder))
        except ValueError as exc:
            raise ConfigurationError(f"{path}: {key!r}: {exc}") from None
    for group in parser._mutually_exclusive_groups:
        both = [key for key, a in keys.items() if a in group._group_actions and a.dest in values]
        if len(both) > 1:
            raise ConfigurationError(f"{path}: {both[1]!r}: not allowed with {both[0]!r}")
    return values


def apply_config_file(parser: argparse.ArgumentParser, args: argparse.Namespace, path: Path) -> None:
    """Set on ``args`` what ``path`` holds, except the options given on the command line (they win), and record
    which came from the file (:func:`name_file_key`)."""
    given: dict[str, Any] = getattr(args, GIVEN, {})
    values = from_file(parser, path)
    for group in parser._mutually_exclusive_groups:  # a --db on the command line drops the file's psk-table
        if any(a.dest in given for a in group._group_actions):
            for a in group._group_actions:
                values.pop(a.dest, None)
    from_config: dict[str, str] = {}
    for dest, (key, value) in values.items():
        if dest not in given:
            setattr(args, dest, value)
            from_config[dest] = key
    setattr(args, FROM_FILE, from_config)


def name_file_key(args: argparse.Namespace, exc: ConfigurationError) -> ConfigurationError:
    """``exc`` about an option that came from the configuration file, reworded to name the file and its key."""
    from_config: dict[str, str] = getattr(args, FROM_FILE, {})
    config = getattr(args, "config", None)
    if config is None or not from_config:
        return exc
    keys = set(from_config.values())
    for match in re.finditer(r"--([a-z0-9-]+)", str(exc)):
        if match.group(1) in keys:
            return ConfigurationError(f"{config}: {match.group(1)!r}: {exc}")
    return exc


def _default(action: argparse.Action) -> str:
    if isinstance(action, _BOOL_ACTIONS):
        return "`false`"
    if action.default is None:
        return "(none)"
    if isinstance(action.default, str):
        return f'`"{action.default}"`'
    return f"`{action.default!r}`"


def reference_table(parser: argparse.ArgumentParser, reloadable: frozenset[str]) -> list[str]:
    """The Markdown table of every key (docs/gateway.md, "Configuration file"): key, type, default, option, and
    whether SIGHUP applies it (``reloadable``: dests) or it needs a restart."""
    lines = ["| key | type | default | option | on SIGHUP |", "|---|---|---|---|---|"]
    for key, action in file_options(parser).items():
        kind = _kind(action)
        if action.choices is not None:
            kind += ": " + ", ".join(f"`{c}`" for c in action.choices)
        applied = "applied" if action.dest in reloadable else "needs a restart"
        lines.append(f"| `{key}` | {kind} | {_default(action)} | `--{key}` | {applied} |")
    return lines


def main() -> None:
    """``python -m m2msec.gateway.config``: print the key table of docs/gateway.md (paste it between the
    ``config-keys`` markers when options change; tests/gateway/test_config_file.py checks it)."""
    from m2msec.cli.gateway import gateway_parser
    from m2msec.gateway.reload import RELOADABLE

    print("\n".join(reference_table(gateway_parser(), RELOADABLE)))


if __name__ == "__main__":
    main()
