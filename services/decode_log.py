"""What DALI's decoders say while they decode, caught per run instead of leaking into the log.

libjpeg-turbo, libpng, libtiff, OpenJPEG and OpenCV report problems by writing to the process's
stderr (file descriptor 2): "Corrupt JPEG data: premature end of data segment" for a picture
they then return two-thirds gray, or the real reason behind DALI's bare "Failed to decode
sample #0 :". The portable DALI model runs each batch inside `DecoderMessages()`, so those lines
become the request's error (strict decoding) and one structured log line that names the request,
never bare server-log lines.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Prefixes that say nothing to a user: "[ERROR] [libjpeg_turbo_decoder]", "[ERROR:0@0.002] global x.cpp:299 f".
_NOISE = re.compile(r"^\[(ERROR|WARN|WARNING|INFO)[^\]]*\]\s*(global \S+ \S+\s*)?")


class DecoderMessages:
    """Redirect fd 2 to a file for the duration of the block; `lines` holds what was written."""

    def __init__(self):
        self._file = tempfile.TemporaryFile()
        self.lines: list[str] = []

    def __enter__(self) -> "DecoderMessages":
        self._file.seek(0)
        self._file.truncate()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.lines = clean(self._file.read().decode("utf-8", "replace"))


def clean(text: str) -> list[str]:
    """Readable, de-duplicated message lines (colour codes and logger prefixes removed)."""
    lines = []
    for raw in _ANSI.sub("", text).splitlines():
        line = raw.strip()
        while _NOISE.match(line):
            line = _NOISE.sub("", line, count=1).strip()
        if line and line not in lines:
            lines.append(line)
    return lines


def decode_error_message(exc: Exception, messages: list[str]) -> str:
    """DALI's decode error with the decoder's own words, which DALI's message leaves out."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    text = " ".join(text.replace("Current pipeline object is no longer valid.", "").split())
    reason = "; ".join(messages) or text or type(exc).__name__
    return f"IMAGE could not be decoded (truncated or corrupt file): {reason}"


def partial_decode_message(messages: list[str]) -> str:
    return ("IMAGE is corrupt: the decoder only partly understood it and would have returned a damaged "
            f"picture: {'; '.join(messages)}")


def structured_entries(log_lines, event: str = "") -> list[dict]:
    """The JSON entries that python models logged (pb_utils.Logger), parsed back from server log
    lines, which Triton prints as a quoted string after the `file:line]` prefix."""
    entries = []
    for line in log_lines:
        _, sep, message = line.partition("] ")
        if not sep or not message.startswith('"{'):
            continue
        try:
            entry = json.loads(json.loads(message))
        except ValueError:
            continue
        if isinstance(entry, dict) and (not event or entry.get("event") == event):
            entries.append(entry)
    return entries
