"""The embedded Supabase stand-in, driven by the official clients over real sockets against a real,
migrated database: password login, refresh, RPC with row-level security, PostgREST-shaped errors."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from postgrest.exceptions import APIError
from supabase import ClientOptions, create_client
from supabase_auth.errors import AuthApiError

from tests.support.seed import ALICE, BOB
from tests.support.standin import signed_in
from tests.support.waiting import wait_until
from worker import admin, db
from worker.embedded.standin import StandIn, make_keys, verify_jwt


def test_make_keys_signs_anon_and_service_role_keys_for_ten_years(pw_secrets):
    keys = make_keys(pw_secrets["jwt_secret"])
    anon = verify_jwt(keys["anon_key"], pw_secrets["jwt_secret"])
    service = verify_jwt(keys["service_key"], pw_secrets["jwt_secret"])
    assert (anon["role"], service["role"], anon["iss"]) == ("anon", "service_role", "supabase")
    assert anon["exp"] - anon["iat"] >= 9 * 365 * 24 * 3600


def test_it_signs_in_with_the_right_password_and_issues_a_user_jwt(standin, fleet, pw_secrets):
    client = create_client(standin.url, standin.anon_key)
    response = client.auth.sign_in_with_password({"email": ALICE[0], "password": ALICE[1]})
    session = response.session
    claims = verify_jwt(session.access_token, pw_secrets["jwt_secret"])
    assert claims["role"] == "authenticated" and claims["aud"] == "authenticated"
    assert claims["email"] == ALICE[0] and claims["sub"] == response.user.id
    assert 3500 <= claims["exp"] - claims["iat"] <= 3600 and claims["session_id"]
    assert session.token_type == "bearer" and session.refresh_token
    assert response.user.email == ALICE[0] and response.user.aud == "authenticated"
    # GET /auth/v1/user answers for the token.
    assert client.auth.get_user(session.access_token).user.id == response.user.id


def test_it_refuses_a_wrong_password_as_supabase_auth_does(standin, fleet):
    client = create_client(standin.url, standin.anon_key)
    with pytest.raises(AuthApiError, match="Invalid login credentials") as caught:
        client.auth.sign_in_with_password({"email": ALICE[0], "password": "not-her-password"})
    assert caught.value.status == 400 and caught.value.code == "invalid_credentials"
    with pytest.raises(AuthApiError, match="Invalid login credentials"):
        client.auth.sign_in_with_password({"email": "nobody@acme.test", "password": "whatever-123"})


def test_a_refresh_token_gives_a_new_session_once(standin, fleet, pw_secrets):
    client = signed_in(standin, ALICE)
    first = client.auth.get_session()
    refreshed = client.auth.refresh_session(first.refresh_token).session
    assert refreshed.refresh_token != first.refresh_token
    assert verify_jwt(refreshed.access_token, pw_secrets["jwt_secret"])["sub"] == first.user.id
    # The used token is spent (rotation): a second use is refused with GoTrue's message.
    other = create_client(standin.url, standin.anon_key)
    with pytest.raises(AuthApiError, match="Already Used"):
        other.auth.refresh_session(first.refresh_token)


def test_sign_out_revokes_the_refresh_token(standin, fleet):
    client = signed_in(standin, ALICE)
    refresh = client.auth.get_session().refresh_token
    client.auth.sign_out()
    other = create_client(standin.url, standin.anon_key)
    with pytest.raises(AuthApiError, match="Refresh Token Not Found"):
        other.auth.refresh_session(refresh)


def test_fleet_overview_through_the_client_shows_the_users_servers(standin, fleet):
    client = signed_in(standin, ALICE)
    rows = client.rpc("fleet_overview", {}).execute().data
    assert [r["name"] for r in rows] == ["pve-alpha", "pve-beta", "pve-delta"]
    alpha = rows[0]
    assert alpha["tenant_name"] == "acme" and alpha["connection_status"] == "online"
    assert alpha["attempts_24h"] == fleet.alpha_attempts and alpha["successes_24h"] == fleet.alpha_successes
    assert rows[1]["tls_mode"] == "insecure" and "refused" in rows[1]["health_check_error"]


def test_connection_history_returns_every_hour_and_null_for_empty_hours(standin, fleet):
    client = signed_in(standin, ALICE)
    history = client.rpc("connection_history", {"p_server_id": fleet.servers["pve-alpha"], "p_hours": 24}).execute().data
    assert len(history["hourly"]) == 24
    last = history["hourly"][-6:]
    assert [h["attempts"] for h in last] == [6, 6, 6, 0, 6, 6]
    assert last[3]["successRate"] is None and last[3]["avgResponseTime"] is None
    assert last[-1]["successRate"] == 83.3
    assert history["summary"]["totalAttempts"] == fleet.alpha_attempts
    assert history["summary"]["successCount"] == fleet.alpha_successes


def test_a_user_of_another_tenant_sees_nothing_of_acme(standin, fleet):
    client = signed_in(standin, BOB)
    rows = client.rpc("fleet_overview", {}).execute().data
    assert [r["name"] for r in rows] == ["pve-gamma"]
    with pytest.raises(APIError) as caught:
        client.rpc("connection_history", {"p_server_id": fleet.servers["pve-alpha"]}).execute()
    assert caught.value.code == "P0002" and "not found" in caught.value.message


def test_a_tenant_without_servers_gets_an_empty_fleet(standin, fleet, db_url):
    with db.connect(db_url) as conn:
        admin.add_tenant(conn, "initech")
        admin.add_user(conn, "carol@initech.test", "carol-password", "initech", "viewer")
    client = signed_in(standin, ("carol@initech.test", "carol-password"))
    assert client.rpc("fleet_overview", {}).execute().data == []


def test_anon_cannot_call_the_functions(standin, fleet):
    client = create_client(standin.url, standin.anon_key)
    with pytest.raises(APIError) as caught:
        client.rpc("fleet_overview", {}).execute()
    assert caught.value.code == "42501" and "permission denied" in caught.value.message
    raw = httpx.post(f"{standin.url}/rest/v1/rpc/fleet_overview", json={},
                     headers={"apikey": standin.anon_key})
    assert raw.status_code == 401


def test_an_unknown_function_is_a_pgrst202_error(standin, fleet):
    client = signed_in(standin, ALICE)
    with pytest.raises(APIError) as caught:
        client.rpc("drop_everything", {}).execute()
    assert caught.value.code == "PGRST202"
    assert caught.value.message == "Could not find the function public.drop_everything without parameters in the schema cache"


def test_bad_arguments_get_a_clear_error(standin, fleet):
    client = signed_in(standin, ALICE)
    with pytest.raises(APIError) as caught:  # wrong argument name
        client.rpc("connection_history", {"server": fleet.servers["pve-alpha"]}).execute()
    assert caught.value.code == "PGRST202"
    assert "public.connection_history(server)" in caught.value.message
    assert "p_server_id, p_hours" in caught.value.hint
    with pytest.raises(APIError) as caught:  # not a uuid
        client.rpc("connection_history", {"p_server_id": "pve-alpha"}).execute()
    assert caught.value.code == "22P02" and "uuid" in caught.value.message
    with pytest.raises(APIError) as caught:  # out of range, raised by the function
        client.rpc("connection_history", {"p_server_id": fleet.servers["pve-alpha"], "p_hours": 0}).execute()
    assert caught.value.code == "22023" and "between 1 and 8784" in caught.value.message
    token = client.auth.get_session().access_token
    raw = httpx.post(f"{standin.url}/rest/v1/rpc/fleet_overview", content=b"{not json",
                     headers={"apikey": standin.anon_key, "Authorization": f"Bearer {token}",
                              "Content-Type": "application/json"})
    assert raw.status_code == 400 and raw.json()["code"] == "PGRST102"


def test_an_expired_or_forged_token_gets_401(standin, fleet, pw_secrets):
    now = int(time.time())
    expired = jwt.encode({"sub": "00000000-0000-0000-0000-000000000000", "role": "authenticated",
                          "iat": now - 7200, "exp": now - 3600}, pw_secrets["jwt_secret"], algorithm="HS256")
    forged = jwt.encode({"role": "service_role", "iat": now, "exp": now + 3600}, "not-the-secret-" * 3,
                        algorithm="HS256")
    no_role = jwt.encode({"iat": now, "exp": now + 3600}, pw_secrets["jwt_secret"], algorithm="HS256")
    url = f"{standin.url}/rest/v1/rpc/fleet_overview"
    for token, code, message in ((expired, "PGRST303", "JWT expired"), (forged, "PGRST301", "signature"),
                                 (no_role, "PGRST301", "role")):
        raw = httpx.post(url, json={}, headers={"apikey": standin.anon_key, "Authorization": f"Bearer {token}"})
        assert raw.status_code == 401, raw.text
        assert raw.json()["code"] == code and message in raw.json()["message"]
    # Through the client too: the error carries the message.
    client = create_client(standin.url, standin.anon_key)
    client.postgrest.auth(expired)
    with pytest.raises(APIError, match="JWT expired"):
        client.rpc("fleet_overview", {}).execute()
    # A request without a project API key never reaches the API.
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"apikey": forged}).json()["message"] == "Invalid API key"


def test_the_service_role_sees_every_tenant(standin, fleet):
    client = create_client(standin.url, standin.service_key)
    names = [r["name"] for r in client.rpc("fleet_overview", {}).execute().data]
    assert names == ["pve-alpha", "pve-beta", "pve-delta", "pve-gamma"]


def test_an_access_token_expires_and_the_refresh_token_renews_it(db_url, pw_secrets, fleet):
    # Two seconds: a token's exp is whole seconds after its (floored) iat, so a 1 s token could be
    # valid for almost no time at all — the renewed one too, failing the call right after renewing.
    short = StandIn(db_url, pw_secrets["jwt_secret"], access_token_ttl_s=2).start()

    def overview(token: str) -> httpx.Response:
        return httpx.post(f"{short.url}/rest/v1/rpc/fleet_overview", json={},
                          headers={"apikey": short.anon_key, "Authorization": f"Bearer {token}"})
    try:
        # No background refresh: this test spends the refresh token itself (the client's own timer
        # would race it for the single-use token).
        client = create_client(short.url, short.anon_key, ClientOptions(auto_refresh_token=False))
        session = client.auth.sign_in_with_password({"email": ALICE[0], "password": ALICE[1]}).session
        assert session.expires_in == 2
        assert wait_until(lambda: overview(session.access_token).status_code == 401, 10)
        raw = overview(session.access_token)
        assert raw.status_code == 401 and raw.json()["message"] == "JWT expired"
        renewed = create_client(short.url, short.anon_key).auth.refresh_session(session.refresh_token).session
        raw = overview(renewed.access_token)
        assert raw.status_code == 200 and [r["name"] for r in raw.json()] == ["pve-alpha", "pve-beta", "pve-delta"]
    finally:
        short.stop()
