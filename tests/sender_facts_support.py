"""Shared numbers, the sender factory and the expected country table of the sender facts tests."""

from __future__ import annotations

from flask_polysms.clock import utcnow
from flask_polysms.records import Sender

MG_SID = "MG" + "0123456789abcdef" * 2

US_LONG = "+14155550100"
CA_LONG = "+14165550100"
US_TOLL_FREE = "+18005550100"
GB_TOLL_FREE = "+448001234567"
GB_LONG = "+447400123456"
# Long codes of the US territories on the US 10DLC networks.
PR_LONG, VI_LONG, GU_LONG, AS_LONG = "+17872345678", "+13406421234", "+16713001234", "+16846221234"


def make_sender(address: str, **fields) -> Sender:
    return Sender(
        id="sender-1",
        project_id="project-1",
        environment="live",
        address=address,
        created_at=utcnow(),
        **fields,
    )


COUNTRIES = ("US", "CA", "GB", "DE", "FR", "IE", "NL", "IT", "CZ", "HR", "BG", "SK")

# (name, two_way, long code, toll-free, short code), each sender type as
# (allowed, registration, throughput_mps).
EXPECTED_ROWS = {
    "US": (
        "United States",
        True,
        (True, "a2p_10dlc", 225),
        (True, "toll_free_verification", 3),
        (True, "short_code_application", 100),
    ),
    "CA": (
        "Canada",
        True,
        (True, "none", 1),
        (True, "toll_free_verification", 3),
        (True, "short_code_application", 100),
    ),
    "GB": (
        "United Kingdom",
        True,
        (True, "none", 10),
        (False, None, None),
        (True, "short_code_application", 300),
    ),
    "DE": (
        "Germany",
        True,
        (True, "none", 10),
        (False, None, None),
        (True, "short_code_application", None),
    ),
    "FR": (
        "France",
        True,
        (True, None, 10),
        (False, None, None),
        (True, "short_code_application", None),
    ),
    "IE": ("Ireland", True, (True, None, 10), (False, None, None), (False, None, None)),
    "NL": ("Netherlands", True, (True, "none", 10), (False, None, None), (False, None, None)),
    "IT": ("Italy", True, (True, None, 10), (False, None, None), (False, None, None)),
    "CZ": ("Czech Republic", True, (True, "none", 10), (False, None, None), (False, None, None)),
    "HR": ("Croatia", False, (False, None, None), (False, None, None), (False, None, None)),
    "BG": ("Bulgaria", False, (False, None, None), (False, None, None), (False, None, None)),
    "SK": ("Slovakia", False, (False, None, None), (False, None, None), (False, None, None)),
}
