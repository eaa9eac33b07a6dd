"""Shared support for the outbound API tests: the numbers they use, the check of the API's one
error shape, and a harness with three agent numbers."""

from __future__ import annotations

import pytest

AGENT_NUMBERS = ("+14155552671", "+14155552672", "+14155552673")
USER_NUMBERS = ("+14155552674", "+14155552675", "+14155552676", "+14155552677")
USER = USER_NUMBERS[0]


def assert_error(response, status: int, *, fields: tuple[str, ...] = ()) -> dict:
    """The one error shape: ``{"detail": str}`` plus ``errors: {field: [str]}`` when fields are
    at fault, nothing else."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) <= {"detail", "errors"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    if "errors" in body:
        assert isinstance(body["errors"], dict) and body["errors"]
        for name, messages in body["errors"].items():
            assert isinstance(name, str)
            assert isinstance(messages, list) and messages
            assert all(isinstance(m, str) and m for m in messages)
    for name in fields:
        assert name in body.get("errors", {}), body
    return body


@pytest.fixture(name="sms")
def sms_fixture(make_sms):
    return make_sms(numbers=AGENT_NUMBERS)
