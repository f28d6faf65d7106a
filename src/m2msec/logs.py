"""``--log-format json``: one JSON object per log line (docs/gateway.md "Logs").

Every line has ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``event`` (a stable snake_case
name given by the log call's ``extra={"event": ...}``; :data:`DEFAULT_EVENT` for lines that give none) and
``message`` (the text line's message), plus, where the call knows them, :data:`FIELDS`: ``peer`` (``HOST:PORT``),
``sa`` (the client's PSK identity or certificate subject: identities are not secrets), ``credential_id``, ``rsc``,
``reason``. A line logged with an exception (a real internal error, never a refused client) carries it as one
string in ``exception`` (D255: the traceback stays in the one line, so a collector never splits it).

Values are written with ``json.dumps(default=str)``: a :class:`~m2msec.keys.secret.SecretKey` that reached a log
call would read ``SecretKey(<32 bytes redacted>)``, as in the text format.
"""

from __future__ import annotations

import datetime
import json
import logging

__all__ = ["DEFAULT_EVENT", "FIELDS", "JSONFormatter", "use_format"]

#: ``event`` of a line whose log call named none
DEFAULT_EVENT = "log"
#: the ``extra=`` keys a JSON line carries when the log call gave them (and they are not None)
FIELDS = ("peer", "sa", "credential_id", "rsc", "reason")


def _peer(value: object) -> object:
    if isinstance(value, tuple) and len(value) >= 2:  # a socket address: (host, port[, flowinfo, scope])
        host = str(value[0])
        return f"[{host}]:{value[1]}" if ":" in host else f"{host}:{value[1]}"
    return value


class JSONFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, object] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, "event", DEFAULT_EVENT),
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = _peer(value) if name == "peer" else value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ASCII only: U+2028, U+2029, U+0085 in a peer-chosen string (a PSK identity) would split the line for
        # readers that take them as line ends (str.splitlines) and let the tail pass as an event of its own (O11)
        return json.dumps(line, default=str, ensure_ascii=True)


def use_format(name: str) -> None:
    """``text`` (leave the handlers as they are) or ``json`` (every root handler writes :class:`JSONFormatter`)."""
    if name == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())
