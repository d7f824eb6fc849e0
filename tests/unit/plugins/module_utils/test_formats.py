# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of every file format the collection writes as root (_formats), as the format's reader reads them.

Each format function takes ANY text and either raises FormatError or returns a line that the format's real reader
reads back as exactly one line, with the value intact. The readers below are pure models of those readers, written
from their sources and manuals (conservative: what they do not understand fails the property):
- systemd's unit and tmpfiles.d parser (src/shared/conf-parser.c, tmpfiles.c): a line ends at \\n, \\r or NUL; a
  line ending in a backslash continues on the next; # and ; start a comment; % is a specifier, $ a variable in
  Exec*=, quotes and C escapes are processed in words;
- systemd's env file reader (src/basic/env-file.c, EnvironmentFile=): the same line ends, quotes and escapes in
  values, and a backslash in a comment escapes the next character, the line end included (before v254);
- sh sourcing a file (set -a; . FILE): a line ends at \\n; an unquoted word is literal only when it holds none of the
  shell's special characters (a tilde after = or : expands in an assignment).
Every property runs at least 2,000 examples (derandomize=True, so the run is the same each time), and the real sh
reads a sample of the env files.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ansible_collections.gpulab.mps.plugins.module_utils import _formats as f
from ansible_collections.gpulab.mps.plugins.module_utils import _qos

EXAMPLES = 2000
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Characters that some reader treats specially, and the safe set, so that both accepted and refused values come up.
SPECIAL = "\n\r\t \x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ufeff\\$%\"'`;#&|<>()*?[]{}~!^\x7f\x9b/..=:,@+-_"
SAFE = "abcXYZ019._/@+,=:-"
TEXT = st.one_of(st.text(), st.text(alphabet=SPECIAL + SAFE), st.text(alphabet=SAFE + "\n\\%$ ", min_size=1),
                 st.text(alphabet=SAFE, min_size=1))
# Absolute paths, most of them of the safe set: what the path fields should mostly accept.
PATHS = st.one_of(TEXT, st.lists(st.text(alphabet="abc019._-@+ \n%\\", min_size=1, max_size=6), min_size=1,
                                 max_size=4).map(lambda parts: "/" + "/".join(parts)))


# --- the readers ---------------------------------------------------------------------------------------------------

SYSTEMD_LINE_END = re.compile("\r\n|\n|\r|\0")


def systemd_logical_lines(text):
    """The logical lines systemd's config parser sees in a unit or drop-in (comments dropped, continuations joined)."""
    lines, continuation = [], None
    for raw in SYSTEMD_LINE_END.split(text):
        stripped = raw.strip(" \t")
        if stripped[:1] in ("#", ";"):
            continue  # a comment, also inside a continuation
        line = stripped if continuation is None else continuation + stripped
        if line.endswith("\\"):
            continuation = line[:-1] + " "
            continue
        continuation = None
        if line:
            lines.append(line)
    if continuation is not None and continuation.strip():
        lines.append(continuation.strip())
    return lines


def systemd_assignment(text):
    """(key, value) of the one logical line of `text`; AssertionError when it is not exactly one assignment."""
    lines = systemd_logical_lines(text)
    assert len(lines) == 1, lines
    key, sep, value = lines[0].partition("=")
    assert sep, lines
    return key.strip(), value.strip()


def systemd_words_are_literal(value):
    """Whether a value's words reach the program as written: no specifier (%), no variable ($), no quote, no escape,
    and words separated by single spaces only."""
    return not re.search(r"[%$\\\"'\s]", value.replace(" ", "")) and "  " not in value


def tmpfiles_fields(text):
    """The fields of each non-comment line of a tmpfiles.d file, as systemd-tmpfiles splits them."""
    lines = []
    for raw in SYSTEMD_LINE_END.split(text):
        stripped = raw.strip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        assert not re.search(r"[\"'\\%]", stripped), "quotes, escapes or specifiers in %r" % stripped
        lines.append(stripped.split())
    return lines


def systemd_env_file(text):
    """systemd's env file reader (EnvironmentFile=), as in src/basic/env-file.c: {name: value}."""
    newline, whitespace, comments = "\n\r", " \t\n\r", "#;"
    state, key, value, found = "pre_key", "", "", {}

    def emit():
        name = key.rstrip(whitespace)
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            found[name] = value

    for char in text + "\n":
        if state == "pre_key":
            if char in comments:
                state = "comment"
            elif char not in whitespace:
                state, key = "key", char
        elif state == "key":
            if char in newline:
                state, key = "pre_key", ""
            elif char == "=":
                state, value = "pre_value", ""
            else:
                key += char
        elif state == "pre_value":
            if char in newline:
                emit()
                state, key = "pre_key", ""
            elif char == "'":
                state = "single"
            elif char == '"':
                state = "double"
            elif char == "\\":
                state = "value_escape"
            elif char not in whitespace:
                state, value = "value", char
        elif state == "value":
            if char in newline:
                value = value.rstrip(whitespace)
                emit()
                state, key = "pre_key", ""
            elif char == "\\":
                state = "value_escape"
            else:
                value += char
        elif state == "value_escape":
            state = "value"
            if char not in newline:
                value += char
        elif state == "single":
            if char == "'":
                state = "value"
            else:
                value += char
        elif state == "double":
            if char == '"':
                state = "value"
            elif char == "\\":
                state = "double_escape"
            else:
                value += char
        elif state == "double_escape":
            state = "double"
            if char not in newline:
                value += char
        elif state == "comment":
            if char == "\\":
                state = "comment_escape"
            elif char in newline:
                state = "pre_key"
        elif state == "comment_escape":
            state = "comment"  # the escaped character (a line end too) stays in the comment
    return found


SH_LITERAL = re.compile(r"^[A-Za-z0-9._/@+,=:%^-]*$")


def sh_sourced(text):
    """What `set -a; . FILE` assigns, for a file of comments and NAME=VALUE lines: {name: value}. A line that is not
    a comment, blank or a literal assignment fails: sh would run it or expand it."""
    found = {}
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", stripped)
        assert match, "sh runs %r as a command" % line
        name, value = match.groups()
        assert SH_LITERAL.match(value), "sh does not read %r literally" % value
        assert not re.search(r"(^|:)~", value), "sh expands the tilde in %r" % value
        found[name] = value
    return found


def real_sh(path):
    """The environment the real sh makes of an env file (set -a; . FILE), without what sh sets itself."""
    done = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; env -0', "sh", path], capture_output=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=30, check=True)
    pairs = [item.decode("utf-8", "surrogateescape").split("=", 1) for item in done.stdout.split(b"\0") if item]
    return dict((k, v) for k, v in pairs if k not in ("PATH", "PWD", "SHLVL", "_", "OLDPWD"))


def refused(func, *args):
    try:
        func(*args)
    except f.FormatError as error:
        return str(error)
    return None


# --- examples: each rule, said once ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, ok", [
    ("nvidia-mps", True), ("gpulab-mps-metrics", True), ("mps_0:a.b", True),
    ("nvidia-mps\nd /tmp/x 0777 root root -", False), ("nvidia-mps\rx", False), ("../gpulab-escape", False),
    ("a/b", False), ("..", False), (".hidden", False), ("-x", False), ("", False), ("x" * 247, True),
    ("x" * 248, False), ("nvidia mps", False), ("nvidia%imps", False), (None, False), (True, False)])
def test_unit_names(name, ok):
    assert (refused(f.unit_name, name, "mps_host_service_name") is None) == ok


@pytest.mark.parametrize("name, ok", [
    ("batch", True), ("batch.env", True), ("a_b-c.1", True), ("..", False), (".", False), ("../escape", False),
    ("sub/../../escape", False), ("/abs", False), ("batch\nLD_PRELOAD=x", False), (".env", False), ("-rf", False),
    ("", False), ("b\u00e4tch", False), (7, False)])
def test_file_names(name, ok):
    assert (refused(f.file_name, name, "qos class name") is None) == ok


@pytest.mark.parametrize("word, ok", [
    ("/usr/bin/nvidia-cuda-mps-control", True), ("GPU-058fcf08-fc4a-49f5", True), ("0=1G,1=1G", True),
    ("a b", False), ("$HOME", False), ("%n", False), ("a\\", False), ('"x"', False), ("'x'", False), ("a;b", False),
    ("a\nb", False), ("", False), ("x" * 4097, False)])
def test_unit_words(word, ok):
    assert (refused(f.unit_word, word, "option") is None) == ok


@pytest.mark.parametrize("argv, ok", [
    (["/usr/bin/python3", "/usr/local/lib/gpulab-mps/gpulab_mps.py", "--plan", "/etc/gpulab-mps/plan.json", "stop"],
     True), (["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/x.conf"], True), (["-/bin/true"], False),
    (["+/bin/sh"], False), (["@/bin/sh", "x"], False), ([":/bin/true"], False), ([], False),
    (["/bin/sh", "-c", "echo hi"], False)])
def test_unit_commands(argv, ok):
    assert (refused(f.unit_command, argv, "ExecStart") is None) == ok


@pytest.mark.parametrize("fields, ok", [
    (("d", "/run/nvidia-mps", "0755", "root", "root", "-"), True),
    (("d", "/run/nvidia mps", "0755", "root", "root", "-"), False),
    (("d", "/run/../etc", "0755", "root", "root", "-"), False), (("d", "run", "0755", "root", "root", "-"), False),
    (("d", "/run/x", "755 x", "root", "root", "-"), False), (("d", "/run/x", "0755", "root\n", "root", "-"), False),
    (("d;", "/run/x", "0755", "root", "root", "-"), False), (("d", "/run/x", "0755", "root", "root", "10d"), True),
    (("d", "/run/x", 493, "root", "root", "-"), False), (("D", "/run/%h", "0755", "root", "root", "-"), False)])
def test_tmpfiles_lines(fields, ok):
    assert (refused(f.tmpfiles_line, *(fields + ("option",))) is None) == ok


@pytest.mark.parametrize("name, value, ok", [
    ("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps", True), ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=1G,1=1G", True),
    ("CUDA_MPS_CLIENT_PRIORITY", 1, True), ("X", 12.5, True), ("X", True, False), ("X", None, False),
    ("lower", "1", False), ("1X", "1", False), ("X", "", False), ("X", "a b", False), ("X", "$(id)", False),
    ("X", "`id`", False), ("X", "a;touch /tmp/x", False), ("X", "~root", False), ("X", "a\nLD_PRELOAD=x", False),
    ("X", "\\", False), ("X", "'", False)])
def test_env_assignments(name, value, ok):
    assert (refused(f.env_assignment, name, value, "option") is None) == ok


@pytest.mark.parametrize("text, ok", [
    ("throughput work: 12 % of the SMs, $HOME and `quotes` are text here", True), ("", True), ("caf\u00e9 \u2603", True),
    ("a\nb", False), ("a\rb", False), ("a\r\nb", False), ("tab\there", False), ("nul\0", False), ("a\u2028b", False),
    ("a\u2029b", False), ("a\x85b", False), ("a\x1eb", False), ("a\x0bb", False), ("esc\x1b[31m", False),
    ("ends in a backslash\\", False), ("a\\nb", False), ("\ud800", False), (None, False)])
def test_comment_lines(text, ok):
    assert (refused(f.comment_line, text, "description") is None) == ok


# --- properties: for ANY text, FormatError or a line its reader reads back intact ----------------------------------

@PROPERTY
@given(TEXT)
@example("nvidia-mps\nd /tmp/pwned 0777 root root -")
@example("../gpulab-escape")
def test_a_unit_name_is_one_file_name_of_the_unit_directory(name):
    try:
        checked = f.unit_name(name, "mps_host_service_name")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    assert checked == name
    for directory, path in (("/etc/systemd/system", "/etc/systemd/system/%s.service" % name),
                            ("/etc/tmpfiles.d", "/etc/tmpfiles.d/gpulab-%s.conf" % name),
                            ("/etc/systemd/system/%s.service.d" % name,
                             "/etc/systemd/system/%s.service.d/gpulab-defaults.conf" % name)):
        assert os.path.normpath(path) == path and os.path.dirname(path) == directory
    unit, value = systemd_assignment("Description=NVIDIA MPS control daemon (%s)\n" % name)
    assert (unit, value) == ("Description", "NVIDIA MPS control daemon (%s)" % name) and "%" not in value


@PROPERTY
@given(TEXT)
@example("../escape")
@example("..")
def test_a_file_name_stays_in_its_directory(name):
    try:
        checked = f.file_name(name, "qos class name")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    path = os.path.join("/etc/gpulab-mps/qos", checked + ".env")
    assert os.path.dirname(path) == "/etc/gpulab-mps/qos" and os.path.normpath(path) == path
    assert f.comment_line("gpulab.mps QoS class " + checked, "name")  # the file's first line carries it


@PROPERTY
@given(TEXT, st.sampled_from(["CUDA_MPS_PIPE_DIRECTORY", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES"]))
@example("/tmp/x\nExecStartPre=/bin/sh -c id", "CUDA_MPS_PIPE_DIRECTORY")
@example("/tmp/x\\", "CUDA_MPS_PIPE_DIRECTORY")
@example("%h", "LD_LIBRARY_PATH")
def test_an_environment_line_of_a_unit_carries_its_value_intact(value, name):
    try:
        line = "Environment=" + f.unit_environment(name, value, "daemon.environment")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    key, assigned = systemd_assignment(line + "\n")
    assert key == "Environment" and assigned == "%s=%s" % (name, value)
    assert systemd_words_are_literal(assigned)


@PROPERTY
@given(st.lists(TEXT, min_size=1, max_size=4))
@example(["/usr/bin/python3", "x\n", "ExecStartPre=/bin/sh"])
@example(["-/bin/true"])
def test_an_exec_line_is_one_command_of_literal_words(argv):
    try:
        line = f.unit_command(argv, "ExecStart")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    key, value = systemd_assignment("ExecStart=%s\n" % line)
    assert key == "ExecStart" and value.split(" ") == argv
    assert systemd_words_are_literal(value) and value[0] not in "-@:+!"


@PROPERTY
@given(PATHS, st.sampled_from(["0755", "0700", "~0755"]), st.sampled_from(["root", "0", "nobody", ":root"]),
       st.sampled_from(["-", "10d", "~1h"]))
@example("/run/nvidia-mps\nd /tmp/pwned 0777 root root -", "0755", "root", "-")
@example("/run/nvidia mps", "0755", "root", "-")
def test_a_tmpfiles_line_has_exactly_six_fields(path, mode, owner, age):
    try:
        line = f.tmpfiles_line("d", path, mode, owner, owner, age, "pipe_directory")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    assert tmpfiles_fields("# a comment\n%s\n" % line) == [["d", path, mode, owner, owner, age]]


@PROPERTY
@given(TEXT, st.sampled_from(["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PIPE_DIRECTORY", "X"]))
@example("12\nLD_PRELOAD=/tmp/evil.so", "X")
@example("$(touch /tmp/x)", "X")
@example("a:~root", "X")
def test_an_env_assignment_reads_alike_in_sh_and_systemd(value, name):
    try:
        line = f.env_assignment(name, value, "qos class")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    text = "# a comment\n%s\n" % line
    assert sh_sourced(text) == {name: value}
    assert systemd_env_file(text) == {name: value}


@PROPERTY
@given(TEXT)
@example("bulk\ntouch /tmp/x\nLD_PRELOAD=/tmp/evil.so")
@example("ends in a backslash\\")
@example("a\u2028LD_PRELOAD=x")
def test_a_comment_line_hides_nothing_and_swallows_nothing(text):
    try:
        line = f.comment_line(text, "description")
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    assert line.startswith("#") and len(line.splitlines()) == 1
    after = "%s\nCUDA_MPS_CLIENT_PRIORITY=1\n" % line
    assert sh_sourced(after) == {"CUDA_MPS_CLIENT_PRIORITY": "1"}
    assert systemd_env_file(after) == {"CUDA_MPS_CLIENT_PRIORITY": "1"}
    assert systemd_logical_lines("[Service]\n%s\nType=forking\n" % line) == ["[Service]", "Type=forking"]
    assert tmpfiles_fields("%s\nd /run/x 0755 root root -\n" % line) == [["d", "/run/x", "0755", "root", "root", "-"]]


def qos_class(description):
    classes = {"batch": {"active_thread_percentage": 12, "client_priority": 1, "description": description}}
    return _qos.qos_plan(classes, "/etc/gpulab-mps/qos", None, None, "/run/nvidia-mps")


@PROPERTY
@given(TEXT)
@example("bulk\ntouch /tmp/x\nLD_PRELOAD=/tmp/evil.so")
@example("bulk\rLD_PRELOAD=/tmp/evil.so")
def test_the_plan_refuses_what_a_class_file_could_not_carry(description):
    """_qos.qos_plan takes a description only when the class file carries it as one comment: the plan and the file
    agree (a description the plan took never fails the file)."""
    qos, errors, _warnings = qos_class(description)
    if errors:
        assert any("description" in e for e in errors), errors
        event("refused")
        return
    event("accepted")
    text = _qos.env_file_text("batch", qos["classes"]["batch"], "/etc/gpulab-mps/qos")
    expected = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "12", "CUDA_MPS_CLIENT_PRIORITY": "1",
                "CUDA_MPS_PIPE_DIRECTORY": "/run/nvidia-mps"}
    assert sh_sourced(text) == expected and systemd_env_file(text) == expected
    header = "gpulab.mps QoS class batch" + (": " + description if description else "")
    assert text.splitlines()[0] == f.comment_line(header, "description")


# --- the real sh, on a sample ----------------------------------------------------------------------------------

SAMPLE = ["/tmp/nvidia-mps", "0=1G,1=1G", "12.5", "a:b", "x=y", "@+,-", "GPU-058fcf08-fc4a-49f5", "-", "=", ":"]
HOSTILE = ["a b", "$(touch {m})", "`touch {m}`", "a;touch {m}", "a\ntouch {m}", "a\rtouch {m}", "~root", "a|b", "'",
           "\\", "a&b", "$HOME", "a\u2028touch {m}", "x\ntouch {m}\n"]


@pytest.mark.parametrize("value", SAMPLE + HOSTILE)
def test_the_real_sh_reads_an_accepted_value_as_written_and_runs_nothing(tmp_path, value):
    marker = tmp_path / "ran"
    value = value.format(m=marker)
    env_file = tmp_path / "class.env"
    try:
        line = f.env_assignment("CUDA_MPS_TEST", value, "sample")
    except f.FormatError:
        assert value in [h.format(m=marker) for h in HOSTILE], "a value of the safe sample was refused"
        assert not marker.exists()
        return
    description = f.comment_line("a sample; $(touch %s) `touch %s` ends here" % (marker, marker), "sample")
    env_file.write_text("%s\n%s\n" % (description, line))
    assert real_sh(str(env_file)) == {"CUDA_MPS_TEST": value}
    assert not marker.exists()


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(st.text(alphabet=SAFE + "\n $;`\\~'\"", min_size=1, max_size=20), st.text(max_size=40))
def test_the_real_sh_agrees_with_the_model_on_generated_class_files(value, description):
    """A sample (60 generated files, not 2,000 subprocesses): whatever the format functions accept, the real sh reads
    as the model does."""
    import tempfile
    try:
        lines = [f.comment_line(description, "description"), f.env_assignment("CUDA_MPS_TEST", value, "value")]
    except f.FormatError:
        event("refused")
        return
    event("accepted")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "class.env")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        assert real_sh(path) == sh_sourced("\n".join(lines) + "\n") == {"CUDA_MPS_TEST": value}
