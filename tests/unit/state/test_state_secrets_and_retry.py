"""Secret masking in every encoding, and the time-bounded retry clock."""

from __future__ import annotations

import json
import time
from urllib.parse import quote, quote_plus

import pytest

from airflow_provider_orchestra_dbt.state.retry import RetryClock, check_budget
from airflow_provider_orchestra_dbt.state.secrets import (
    mask_url_credentials,
    redact,
    secret_forms,
    url_credentials,
)

SECRETS = ['a/b"c\\d+e%f-123', "plain-secret-456", "ümlaut/ß-789"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    "encode",
    [
        lambda s: s,
        lambda s: quote(s, safe=""),
        lambda s: quote(s),
        lambda s: quote_plus(s),
        lambda s: quote(s, safe="").lower(),
        lambda s: json.dumps(s)[1:-1],
        lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
        lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
        lambda s: repr(s)[1:-1],
    ],
    ids=["exact", "quote", "quote-path", "quote_plus", "lower-hex", "json", "json-utf8",
         "json-slash", "repr"],
)  # fmt: skip
def test_every_encoding_is_masked(secret: str, encode: object) -> None:
    assert callable(encode)
    assert redact(f"<{encode(secret)}>", [secret]) == "<***>"


def test_longer_forms_are_masked_whole_and_empty_secrets_ignored() -> None:
    assert redact("x abcdef y abc z", ["abc", "abcdef", None, ""]) == "x *** y *** z"
    assert secret_forms("") == set()


@pytest.mark.parametrize(
    ("url", "masked", "secrets"),
    [
        ("https://host/x", "https://host/x", ()),
        ("https://u:p%2Fw@host:1/x", "https://***@host:1/x", ("p%2Fw", "p/w", "u:p%2Fw", "u:p/w")),
        # Unencoded '/' in the password: urlsplit would see the host as "u:ab".
        ("http://u:ab/cd@host/x", "http://***@host/x", ("ab/cd", "u:ab/cd")),
        ("http://tok@host", "http://***@host", ("tok",)),
        ("not a url @ all", "not a url @ all", ()),
    ],
)
def test_url_credentials_are_found_and_masked(
    url: str, masked: str, secrets: tuple[str, ...]
) -> None:
    assert mask_url_credentials(url) == masked
    assert set(url_credentials(url)) == set(secrets)
    assert url_credentials(None) == () and url_credentials(3) == ()


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    clock = RetryClock(10.0, base=0.1, cap=1.0)
    waits = [clock.backoff(3) for _ in range(2000)]
    assert 0 <= min(waits) < 0.05 and 0.35 < max(waits) <= 0.4
    assert max(clock.backoff(500) for _ in range(100)) <= 1.0


def test_sleep_is_cut_at_the_deadline_or_refused() -> None:
    clock = RetryClock(0.2, base=0.1, cap=1.0)
    assert not clock.sleep(5.0, clamp=False)
    started = time.monotonic()
    assert clock.sleep(5.0)
    assert time.monotonic() - started < 0.5
    assert not clock.sleep(0.0)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_budget_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(ValueError, match="where: retry_budget must be a finite number >= 0"):
        check_budget(bad, "where")
    assert check_budget(0, "where") == 0.0
