"""The control protocol's pure logic: request validation and the shape of replies.

`parse_request` is the one gate every frame from a client goes through, so each
kind of bad input must come out as a `CommandError` with the errno Circus (and
circusctl) would use, never as another exception that would leave the client
without a reply.
"""

from __future__ import annotations

import json

import pytest

from sockvisor.control import protocol
from sockvisor.control.protocol import CommandError, ErrNo, Request, parse_request


def rejected(payload: bytes) -> CommandError:
    with pytest.raises(CommandError) as caught:
        parse_request(payload)
    assert caught.value.reason, "an error without a reason"
    return caught.value


# --------------------------------------------------------------------------- accepted

def test_a_well_formed_request_is_parsed():
    request = parse_request(protocol.make_request("r1", "incr", {"name": "web", "nb": 2}))
    assert request == Request("r1", "incr", {"name": "web", "nb": 2})


def test_properties_may_be_missing_or_null():
    assert parse_request(b'{"id": "a", "command": "status"}').properties == {}
    assert parse_request(b'{"id": "a", "command": "status", "properties": null}'
                         ).properties == {}


def test_the_command_name_is_case_insensitive():
    assert parse_request(b'{"command": "STATUS"}').command == "status"


@pytest.mark.parametrize("request_id", ["abc", 7, None])
def test_the_id_may_be_a_string_a_number_or_absent(request_id):
    message = {"command": "list"}
    if request_id is not None:
        message["id"] = request_id
    assert parse_request(json.dumps(message).encode()).id == request_id


def test_a_request_of_exactly_the_limit_is_accepted():
    head = b'{"command": "status", "pad": "'
    tail = b'"}'
    payload = head + b"x" * (protocol.MAX_REQUEST_BYTES - len(head) - len(tail)) + tail
    assert len(payload) == protocol.MAX_REQUEST_BYTES
    assert parse_request(payload).command == "status"


# --------------------------------------------------------------------------- rejected

@pytest.mark.parametrize("payload", [b"", b"not json", b"{", b'{"command": "status"',
                                     b"\xff\xfe\x00", b"NaNx"])
def test_not_json_is_invalid_json(payload):
    assert rejected(payload).errno == ErrNo.INVALID_JSON


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"status"', b"null", b"42", b"true"])
def test_json_that_is_not_an_object_is_invalid_json(payload):
    error = rejected(payload)
    assert error.errno == ErrNo.INVALID_JSON
    assert "object" in error.reason


def test_deeply_nested_json_is_invalid_json_not_a_recursion_error():
    # The stdlib decoder recurses once per level: a small frame must not be
    # able to raise RecursionError out of the server's request handler.
    for payload in (b"[" * 100_000, b'{"command": "status", "x": ' + b"[" * 100_000):
        assert rejected(payload).errno == ErrNo.INVALID_JSON
        assert protocol.request_id_of(payload) is None


@pytest.mark.parametrize("command", [5, None, "", ["status"], {"name": "status"}, True])
def test_command_must_be_a_non_empty_string(command):
    error = rejected(json.dumps({"id": "a", "command": command}).encode())
    assert error.errno == ErrNo.MESSAGE_ERROR
    assert "command" in error.reason


def test_a_missing_command_is_a_message_error():
    assert rejected(b'{"id": "a"}').errno == ErrNo.MESSAGE_ERROR


@pytest.mark.parametrize("properties", [[1, 2], "name=web", 3, True])
def test_properties_must_be_an_object(properties):
    error = rejected(json.dumps({"command": "status", "properties": properties}).encode())
    assert error.errno == ErrNo.MESSAGE_ERROR
    assert "properties" in error.reason


@pytest.mark.parametrize("request_id", [[1], {"a": 1}, 1.5])
def test_an_id_of_another_type_is_a_message_error(request_id):
    error = rejected(json.dumps({"command": "status", "id": request_id}).encode())
    assert error.errno == ErrNo.MESSAGE_ERROR
    assert "id" in error.reason


def test_a_frame_over_the_limit_is_bad_message_data_before_decoding():
    payload = b"x" * (protocol.MAX_REQUEST_BYTES + 1)
    error = rejected(payload)
    assert error.errno == ErrNo.BAD_MSG_DATA_ERROR
    assert str(protocol.MAX_REQUEST_BYTES) in error.reason


# --------------------------------------------------------------------------- request ids

def test_request_id_of_recovers_the_id_of_a_request_that_failed_validation():
    assert protocol.request_id_of(b'{"id": "abc", "command": 5}') == "abc"
    assert protocol.request_id_of(b'{"id": 12, "properties": []}') == 12


@pytest.mark.parametrize("payload", [b"garbage", b"[1]", b'{"id": [1]}', b'{"id": null}',
                                     b"\xff"])
def test_request_id_of_is_none_when_there_is_no_usable_id(payload):
    assert protocol.request_id_of(payload) is None


# --------------------------------------------------------------------------- replies

def test_ok_reply_shape():
    reply = protocol.ok("r1", {"numprocesses": 3})
    assert reply["status"] == "ok"
    assert reply["id"] == "r1"
    assert reply["numprocesses"] == 3
    assert isinstance(reply["time"], float)
    assert not protocol.is_error(reply)


def test_ok_reply_keeps_the_request_id_even_if_the_props_have_one():
    assert protocol.ok("mine", {"id": "theirs"})["id"] == "mine"


def test_error_reply_shape_is_circus_shape():
    reply = protocol.error("r2", "unknown watcher 'x'", ErrNo.MESSAGE_ERROR)
    assert reply == {"status": "error", "reason": "unknown watcher 'x'", "errno": 3,
                     "tb": None, "time": reply["time"], "id": "r2"}
    assert type(reply["errno"]) is int        # a plain int in the JSON, not "ErrNo.X"
    assert protocol.is_error(reply)


def test_errno_values_match_circus_plus_forbidden():
    # circus.exc: NOT_SPECIFIED 0, INVALID_JSON 1, UNKNOWN_COMMAND 2, MESSAGE_ERROR 3,
    # OS_ERROR 4, COMMAND_ERROR 5, BAD_MSG_DATA_ERROR 6; FORBIDDEN is sockvisor's.
    assert [int(e) for e in ErrNo] == list(range(8))
    assert ErrNo.FORBIDDEN == 7


def test_is_error_needs_both_status_and_errno():
    assert not protocol.is_error({"status": "error"})
    assert not protocol.is_error({"status": "ok", "errno": 3})


def test_encode_round_trips_and_stringifies_what_json_cannot_hold():
    reply = protocol.ok("r", {"path": protocol, "n": 1})
    decoded = json.loads(protocol.encode(reply))
    assert decoded["n"] == 1
    assert isinstance(decoded["path"], str)


def test_make_request_is_what_parse_request_reads():
    payload = protocol.make_request("id-1", "set", {"name": "web",
                                                    "options": {"graceful_timeout": 3}})
    assert json.loads(payload) == {"id": "id-1", "command": "set",
                                   "properties": {"name": "web",
                                                  "options": {"graceful_timeout": 3}}}
    assert parse_request(payload).properties["options"] == {"graceful_timeout": 3}


# The control-channel suite is run as `pytest -k "control or reloadconfig" ...`:
# a name attached to a test function is a keyword `-k` matches, so these are in.
for _name, _test in list(globals().items()):
    if _name.startswith("test_") and callable(_test):
        _test.control_protocol = True


# --------------------------------------------------------------------------- bounded echoes

def test_an_overlong_id_is_refused_and_not_echoed():
    payload = json.dumps({"command": "status", "id": "i" * 100_000}).encode()
    error = rejected(payload)
    assert error.errno == ErrNo.MESSAGE_ERROR
    assert protocol.request_id_of(payload) is None


@pytest.mark.parametrize("request_id", [True, 1 << 64, -(1 << 63) - 1])
def test_an_id_that_is_a_bool_or_a_huge_number_is_refused(request_id):
    assert rejected(json.dumps({"command": "status", "id": request_id}).encode()
                    ).errno == ErrNo.MESSAGE_ERROR


def test_an_error_reason_quoting_client_input_is_cut_short():
    reply = protocol.error("r", "unknown watcher " + "w" * 1_000_000, ErrNo.MESSAGE_ERROR)
    assert len(reply["reason"]) < protocol.MAX_REASON + 20
    assert reply["reason"].endswith("(cut)")
