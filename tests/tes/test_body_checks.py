"""The create path's one-pass parse (issue 15): ``checks_cannot_fail`` may skip the text and limit
walks only when they could not fail, and ``parse_task_json`` builds exactly the task the
``json.loads`` path builds, or declines. Either may say "not proven" (False / None) too often,
never too rarely: the full checks then run as before."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tesp_api.tes.limits import TaskLimits, check_task_limits, check_text, checks_cannot_fail
from tesp_api.tes.validate import (
    TaskValidationError,
    ValidationLimits,
    parse_task,
    parse_task_json,
)

EXECUTOR = '"executors":[{"image":"alpine","command":["echo","hello"]}]'
PLAIN = ('{"name":"bench","tags":{"project":"bench"},' + EXECUTOR + "}").encode()
DEFAULTS = TaskLimits()


def full_checks_pass(body: bytes, limits: TaskLimits) -> bool:
    try:
        raw = json.loads(body)
        check_text(raw)
        check_task_limits(raw, limits)
    except (ValueError, RecursionError):  # TaskValidationError is a ValueError, like JSONDecodeError
        return False
    return True


def test_a_small_plain_task_is_proven_to_pass_the_checks() -> None:
    assert checks_cannot_fail(PLAIN, DEFAULTS)
    assert checks_cannot_fail(('{"name":"café ✓",' + EXECUTOR + "}").encode(), DEFAULTS)


@pytest.mark.parametrize(
    "body",
    [
        ('{"name":"a\\u0000b",' + EXECUTOR + "}").encode(),  # NUL by escape
        ('{"name":"\\udc00",' + EXECUTOR + "}").encode(),  # lone surrogate by escape
        b'{"name":"\xed\xa0\x80",'
        + EXECUTOR.encode()
        + b"}",  # an encoded surrogate (json.loads: surrogatepass)
        b'{"name":"\xff",' + EXECUTOR.encode() + b"}",  # not UTF-8
        ('{"name":"x",' + EXECUTOR + "}").encode("utf-16"),  # UTF-16, which json.loads also reads
        ('{"volumes":' + "[" * 64 + "]" * 64 + "," + EXECUTOR + "}").encode(),  # nested too deeply
    ],
    ids=["nul", "surrogate-escape", "encoded-surrogate", "not-utf8", "utf16", "deep"],
)
def test_text_the_text_check_must_look_at_is_not_proven(body: bytes) -> None:
    assert not checks_cannot_fail(body, DEFAULTS)


# Bodies that are little more than the one value over the limit: the bound must be tight enough
# to see them (a bound twice as loose would let each through).
LONG = 100


@pytest.mark.parametrize(
    ("limits", "body"),
    [
        (TaskLimits(max_name_chars=LONG - 1), '{"name":"' + "n" * LONG + '"}'),
        (TaskLimits(max_description_chars=LONG - 1), '{"description":"' + "d" * LONG + '"}'),
        (TaskLimits(max_argument_bytes=LONG), '{"executors":[{"command":["' + "a" * LONG + '"]}]}'),
        (TaskLimits(max_argument_bytes=LONG), '{"executors":[{"env":{"K":"' + "v" * (LONG - 2) + '"}}]}'),
        (TaskLimits(max_task_content_bytes=LONG - 1), '{"inputs":[{"content":"' + "c" * LONG + '"}]}'),
        (TaskLimits(max_url_chars=LONG - 1), '{"inputs":[{"url":"' + "u" * LONG + '"}]}'),
        (TaskLimits(max_volumes=2), '{"volumes":["/a","/b","/c"]}'),
        (TaskLimits(max_tags=1), '{"tags":{"a":"1","b":"2"}}'),
    ],
    ids=["name", "description", "argument", "env", "content", "url", "volumes", "tags"],
)
def test_a_body_that_could_be_over_a_limit_is_not_proven(limits: TaskLimits, body: str) -> None:
    assert not full_checks_pass(body.encode(), limits)
    assert not checks_cannot_fail(body.encode(), limits)


JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=40,
)
SMALL = TaskLimits(
    max_name_chars=40,
    max_description_chars=60,
    max_url_chars=50,
    max_argument_bytes=30,
    max_task_content_bytes=20,
    max_executors=3,
    max_inputs=4,
    max_outputs=4,
    max_volumes=2,
    max_tags=3,
    max_env=2,
    max_command_arguments=3,
)


@settings(max_examples=400, deadline=None)
@given(
    value=st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=50),
            "tags": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=5),
            "volumes": st.lists(st.text(max_size=8), max_size=4),
            "inputs": st.lists(
                st.fixed_dictionaries({"path": st.text(max_size=6), "content": st.text(max_size=25)})
            ),
            "executors": st.lists(
                st.fixed_dictionaries(
                    {"image": st.text(max_size=5), "command": st.lists(st.text(max_size=12), max_size=5)},
                    optional={"env": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)},
                ),
                max_size=4,
            ),
            "extra": JSON_TEXT,
        },
    ),
    ascii_only=st.booleans(),
    limits=st.sampled_from([SMALL, DEFAULTS]),
)
def test_whatever_is_proven_passes_the_full_checks(
    value: dict[str, Any], ascii_only: bool, limits: TaskLimits
) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if checks_cannot_fail(body, limits):
        assert full_checks_pass(body, limits)


def reference_parse(body: bytes, limits: ValidationLimits) -> Any:
    try:
        return parse_task(json.loads(body), limits)
    except (TaskValidationError, json.JSONDecodeError):
        return None


@pytest.mark.parametrize(
    "body",
    [
        PLAIN,
        ('{"name":"a","name":"b",' + EXECUTOR + "}").encode(),  # duplicate keys: the last wins in both
        ('{"resources":{"cpu_cores":2.0,"ram_gb":1,"preemptible":"yes"},' + EXECUTOR + "}").encode(),
        ('{"inputs":[{"path":"/a","type":"FILE","content":"x"}],' + EXECUTOR + "}").encode(),
        ('{"id":null,"state":null,' + EXECUTOR + "}").encode(),  # read-only fields given as null
        ("  {" + EXECUTOR + "}\n").encode(),
    ],
)
def test_the_one_pass_parse_builds_the_json_loads_task(body: bytes) -> None:
    task = parse_task_json(body)
    assert task is not None
    assert task == reference_parse(body, ValidationLimits())


@pytest.mark.parametrize(
    "body",
    [
        ('{"id":"mine","state":"COMPLETE",' + EXECUTOR + "}").encode(),  # parse_task drops read-only fields
        ('{"logs":[],' + EXECUTOR + "}").encode(),
        ('{"surprise":1,' + EXECUTOR + "}").encode(),  # reject_unknown_fields = false strips it
        b"\xef\xbb\xbf{" + EXECUTOR.encode() + b"}",  # a UTF-8 BOM, which json.loads of bytes accepts
        ('{"name":"a\tb",' + EXECUTOR + "}").encode(),  # a raw control character: invalid JSON
        b"[]",
        b'{"executors":[]}x',
    ],
    ids=["read-only", "logs", "unknown", "bom", "control", "array", "trailing"],
)
def test_the_one_pass_parse_declines_what_the_json_loads_path_treats_otherwise(body: bytes) -> None:
    assert parse_task_json(body) is None
