"""Schemathesis over the API's own OpenAPI document, against the real stack (Postgres, Redis, a worker).

Every operation gets a bounded number of generated requests (valid and invalid, with a valid key of its own
tenant); each answer must be no 5xx, a status code the document lists for the operation, the media type the
document gives for it, and a body that matches the declared schema.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.stack import Stack

pytestmark = pytest.mark.service

# Examples per operation: enough to reach every parameter's bounds, small enough for CI on 2 cores.
MAX_EXAMPLES = 30
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_answers_as_documented(pg_stack: Stack) -> None:
    """Each operation of the document in turn, ``MAX_EXAMPLES`` generated cases each (deterministic), every
    answer checked; the totals are printed. (Schemathesis' own pytest loader is not used: its fixture-based
    loader does not run on this pytest version.)"""
    schema = schemathesis.openapi.from_url(pg_stack.base_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {pg_stack.keys['beta']}"}
    calls: Counter[str] = Counter()
    failures: dict[str, str] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"

        # Requests that fit the document and requests that break it (bad types, out-of-range values...).
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=cases)
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,  # the same examples on every run: a failure in CI reproduces here
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case) -> None:
            calls[label] += 1  # noqa: B023 (run is called at once, in this iteration)
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # one operation's failure must not hide the others'
            failures[label] = f"{type(e).__name__}: {e}"[:3000]
    print(
        f"schemathesis: {len(operations)} operations, {sum(calls.values())} examples, {len(failures)} failing"
    )
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert set(calls) == {f"{op.method.upper()} {op.path}" for op in operations}
