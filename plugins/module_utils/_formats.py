# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Values that go into a file format another program reads as root: checked for that format, in one place each.

This is a private module_utils of gpulab.mps: its API may change without notice. STANDARD LIBRARY ONLY.

An inventory value written into a file is code for whoever reads the file: a newline in a service name became a live
tmpfiles.d line that root applied at boot, a newline in a QoS class's description a shell command in the class's env
file that job scripts source. Every value that reaches one of these formats passes the function of its format here;
a value a format cannot carry is refused with the option's name, before anything is written (the rules of each format
are in tests/unit/plugins/module_utils/test_formats.py). Rendering (_unit_files, _qos) only ever writes checked values.

- systemd unit files (the unit, its drop-ins, the metrics timer): unit names, and the words of Exec*= and
  Environment= lines: printable ASCII of a safe set, so that nothing is quoted, expanded ($, %) or continued (\\).
- tmpfiles.d lines: a path field of the same set (no whitespace: a field separator).
- env files read by a shell (`set -a; . FILE`) and by systemd (EnvironmentFile=): NAME=VALUE with a NAME of
  [A-Z_][A-Z0-9_]* and a VALUE of the safe set, which both read alike, unquoted.
- comment lines of any of them: one line of printable text (no control character, no Unicode line separator, no
  backslash: systemd's EnvironmentFile= reader lets a backslash in a comment escape the line end, sh does not).
- file names (a QoS class's <class>.env, a unit's name): one path component of the safe set, never . or ..
- YAML and JSON are never assembled from strings: they are dumped (yaml.safe_dump, to_nice_yaml, json.dumps) from data.
"""

from __future__ import annotations

import os
import re

# What a word of a unit line, a tmpfiles path or an env value may hold: letters, digits and . _ - + @ / , = :
_WORD_RE = re.compile(r"^[A-Za-z0-9._/@+,=:-]+\Z", re.ASCII)
# systemd.unit(5): "[a-zA-Z0-9:_.\-]" and "@" for templates; at most 255 characters with the suffix.
_UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.\-]+\Z", re.ASCII)
_ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]*\Z", re.ASCII)
# One component of a path, written by the collection: letters, digits and . _ -, not starting with a dot or a dash.
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\Z", re.ASCII)
# Control characters (C0, DEL, C1), what some reader takes for a line end (U+2028, U+2029), lone surrogates (no
# UTF-8 for them), and the backslash (systemd's env file reader escapes the line end with it, even in a comment).
_NOT_IN_A_LINE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\\\\]")
# tmpfiles.d(5) fields the collection writes: a type (with its modifiers), a mode, a user or group, an age.
_TMPFILES_TYPE_RE = re.compile(r"^[fFwdDevqQpLcbCxXrRzZtThHaA][+!=~^-]*\Z", re.ASCII)
_TMPFILES_MODE_RE = re.compile(r"^(-|[~:]?[0-7]{3,4})\Z", re.ASCII)
_TMPFILES_OWNER_RE = re.compile(r"^(-|:?[A-Za-z_][A-Za-z0-9_.-]{0,31}|:?[0-9]+)\Z", re.ASCII)
_TMPFILES_AGE_RE = re.compile(r"^(-|~?[0-9]+[a-z]*)\Z", re.ASCII)
# The longest word the collection writes into a line (a path): far below every reader's line limit.
MAX_WORD = 4096


class FormatError(ValueError):
    """A value the format it goes into cannot carry: the message names the option and what to use."""


def _check(value, option):
    if not isinstance(value, str) or isinstance(value, bool):
        raise FormatError("%s must be text, got %r" % (option, value))
    return value


def unit_name(value, option="service_name", suffix=".service"):
    """A systemd unit name without its suffix (nvidia-mps), checked; returns it. It also names files (the unit, its
    drop-in directory, its tmpfiles.d entry), so it is never . or .. and holds no /."""
    _check(value, option)
    if not _UNIT_NAME_RE.match(value) or value[0] in "-." or len(value) + len(suffix) > 255:
        raise FormatError("%s %r is not a systemd unit name: use letters, digits and : _ . - (not first: . or -; at "
                          "most %d characters)" % (option, value, 255 - len(suffix)))
    return value


def file_name(value, option):
    """One component of a path (a QoS class's file <class>.env): letters, digits and . _ -, not starting with . or -;
    never . or .., never a /. Returns it."""
    _check(value, option)
    if not _FILE_NAME_RE.match(value) or len(value) > 200:
        raise FormatError("%s %r is not a plain file name: use letters, digits and . _ - (not first: . or -; no /, "
                          "at most 200 characters)" % (option, value))
    return value


def unit_word(value, option):
    """One word of an Exec*= or Environment= line of a unit (a path, a number, a UUID), written unquoted."""
    _check(value, option)
    if not _WORD_RE.match(value) or len(value) > MAX_WORD:
        raise FormatError("%s %r cannot go into a systemd unit: use letters, digits and . _ - + @ / , = : (no space, "
                          "quote, $, %%, \\ or control character)" % (option, value))
    return value


def unit_path(value, option):
    """An absolute, normalised path written into a unit line (unquoted)."""
    unit_word(value, option)
    if not value.startswith("/") or os.path.normpath(value) != value or value.startswith("//"):
        raise FormatError("%s %r must be an absolute, normalised path" % (option, value))
    return value


def unit_command(argv, option):
    """An Exec*= command line from an argv whose every word passes unit_word. The first word is an absolute path or
    a plain command name: a leading - @ : + ! would be one of systemd's prefixes (ignore failure, argv[0], no
    expansion, full privileges)."""
    if not argv:
        raise FormatError("%s: an empty command" % option)
    words = [unit_word(str(word), "%s word %d" % (option, number)) for number, word in enumerate(argv)]
    if not (words[0].startswith("/") or words[0][0].isalnum()):
        raise FormatError("%s: the command %r must be an absolute path or a plain name (a leading - @ : + ! is a "
                          "systemd prefix)" % (option, words[0]))
    return " ".join(words)


def unit_environment(name, value, option):
    """An Environment= assignment of a unit: NAME=VALUE, both checked."""
    return "%s=%s" % (env_name(name, option), unit_word(str(value), option))


def tmpfiles_path(value, option):
    """The path field of a tmpfiles.d line: absolute, normalised, and of the safe set (whitespace would start the next
    field, a backslash an escape, a % a specifier)."""
    return unit_path(value, option)


def tmpfiles_line(kind, path, mode, user, group, age, option):
    """One line of a tmpfiles.d file (tmpfiles.d(5)): type, path, mode, user, group, age; every field checked, so that
    the line is exactly these six fields."""
    fields = [_check(kind, option), tmpfiles_path(path, option), _check(mode, option), _check(user, option),
              _check(group, option), _check(age, option)]
    for field, rule, what in ((kind, _TMPFILES_TYPE_RE, "type"), (mode, _TMPFILES_MODE_RE, "mode (such as 0755)"),
                              (user, _TMPFILES_OWNER_RE, "user"), (group, _TMPFILES_OWNER_RE, "group"),
                              (age, _TMPFILES_AGE_RE, "age")):
        if not rule.match(field):
            raise FormatError("%s: %r is not a tmpfiles.d %s" % (option, field, what))
    return " ".join(fields)


def env_name(name, option):
    _check(name, option)
    if not _ENV_NAME_RE.match(name):
        raise FormatError("%s: %r is not an environment variable name ([A-Z_][A-Z0-9_]*)" % (option, name))
    return name


def env_assignment(name, value, option):
    """NAME=VALUE of an env file that a shell sources (set -a; . FILE) and systemd reads (EnvironmentFile=): the
    value is of the safe set, which both read unquoted and alike."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FormatError("%s: the value of %s must be text or a number, got %r" % (option, name, value))
    value = str(value)
    if not _WORD_RE.match(value) or len(value) > MAX_WORD:
        raise FormatError("%s: the value %r of %s cannot go into an env file that a shell sources: use letters, "
                          "digits and . _ - + @ / , = :" % (option, value, name))
    return "%s=%s" % (env_name(name, option), value)


def comment_line(text, option):
    """'# text' for a comment of a unit, tmpfiles.d or env file: one line of printable text."""
    _check(text, option)
    if _NOT_IN_A_LINE_RE.search(text):
        raise FormatError("%s must be one line of printable text (no newline, carriage return, tab, backslash or "
                          "other control character): %r" % (option, text))
    return "# " + text if text else "#"
