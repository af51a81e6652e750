"""API keys from the command line: create, list, revoke; a revoked key stops working at once."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.fixtures.stack import REPO, Stack, create_key, saft

pytestmark = pytest.mark.service


def keys_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(saft("keys", *args), cwd=REPO, env=stack.env, capture_output=True, text=True, timeout=120)


def listed(stack: Stack, tenant: str) -> list[dict]:
    out = keys_cli(stack, "list", "--tenant", tenant, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_create_list_and_revoke_a_key(stack: Stack) -> None:
    tenant = f"keys-{stack.kind.replace('+', '-')}"
    first = create_key(stack.env, tenant)
    made = keys_cli(stack, "create", "--tenant", tenant)
    second = made.stdout.strip()
    # the key on stdout; on stderr the one line about it, none of the migrations' (Alembic's INFO lines)
    assert made.returncode == 0 and second.startswith("saft_") and "\n" not in second
    assert made.stderr.startswith("new API key key_") and len(made.stderr.strip().splitlines()) == 1, made.stderr
    rows = listed(stack, tenant)
    assert [r["prefix"] for r in rows] == [first[:11], second[:11]]
    assert all(r["revoked_at"] is None and r["tenant"] == tenant for r in rows)
    assert first not in json.dumps(rows)  # the list never shows a key

    def status(key: str) -> int:
        with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}) as c:
            return c.get("/v1/jobs").status_code

    assert status(first) == 200 and status(second) == 200
    plain = keys_cli(stack, "list", "--tenant", tenant)
    assert plain.returncode == 0 and f"{first[:11]}..." in plain.stdout and first not in plain.stdout
    assert plain.stderr == ""  # no Alembic lines
    out = keys_cli(stack, "revoke", f"{first[:11]}...")  # by the prefix, pasted as the list shows it
    assert out.returncode == 0 and f"revoked {rows[0]['id']}" in out.stdout, out.stderr
    assert status(first) == 401 and status(second) == 200  # at once, and only that key
    rows = listed(stack, tenant)
    assert rows[0]["revoked_at"] is not None and rows[1]["revoked_at"] is None
    again = keys_cli(stack, "revoke", rows[0]["id"])  # by id: already revoked, says so
    assert again.returncode == 0 and "already revoked" in again.stdout
    whole = keys_cli(stack, "revoke", second)  # by the whole key
    assert whole.returncode == 0 and status(second) == 401
    missing = keys_cli(stack, "revoke", "key_does_not_exist")
    assert missing.returncode == 2 and "no API key matches 'key_does_not_exist'" in missing.stderr
    wrong = "saft_" + "x" * (len(second) - 5)  # a whole key that is not ours: refused, and not echoed
    refused = keys_cli(stack, "revoke", wrong)
    assert refused.returncode == 2 and "no API key matches the key given" in refused.stderr
    assert wrong not in refused.stderr
    assert status(stack.keys["alpha"]) == 200  # other tenants' keys are untouched
