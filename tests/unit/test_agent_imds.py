"""The agent's IMDSv2 client against the project's IMDS emulator."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from annex_sandbox.imds import EmulatedInstance, ImdsServer
from condor_annex.agent.imds import ImdsClient, ImdsUnavailable


def _instance(**kw: object) -> EmulatedInstance:
    return EmulatedInstance(instance_id="i-0123456789abcdef0", **kw)  # type: ignore[arg-type]


def test_identity_and_public_ip(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(_instance(region="eu-west-1", public_ipv4="198.51.100.7"))
    client = ImdsClient(endpoint=url)
    document = client.identity_document()
    assert (document["instanceId"], document["region"]) == ("i-0123456789abcdef0", "eu-west-1")
    assert client.public_ipv4() == "198.51.100.7"


def test_no_public_ip_is_none(imds_server: ImdsServer) -> None:
    client = ImdsClient(endpoint=imds_server.add_instance(_instance()))
    assert client.public_ipv4() is None


def test_every_get_carries_the_session_token_and_one_token_serves_many(
    imds_server: ImdsServer,
) -> None:
    url = imds_server.add_instance(_instance())
    client = ImdsClient(endpoint=url)
    client.identity_document()
    client.public_ipv4()
    log = imds_server.requests("i-0123456789abcdef0")
    assert [m for m, _, _ in log].count("PUT") == 1
    assert all(status in (200, 404) for _, _, status in log)


def test_emulator_refuses_imdsv1_so_the_client_never_needs_it(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(_instance())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.rstrip("/") + "/latest/meta-data/instance-id", timeout=2)
    assert refused.value.code == 401
    assert ImdsClient(endpoint=url).get("meta-data/instance-id") == "i-0123456789abcdef0"


def test_token_is_refreshed_before_expiry(imds_server: ImdsServer) -> None:
    now = [0.0]
    client = ImdsClient(endpoint=imds_server.add_instance(_instance()), clock=lambda: now[0])
    first = client.token()
    now[0] = 21600 - 299  # inside the refresh margin
    assert client.token() != first


def test_expired_token_answered_401_is_replaced_once(imds_server: ImdsServer) -> None:
    client = ImdsClient(endpoint=imds_server.add_instance(_instance()))
    client.token()
    client._token = "stale-token"
    assert client.get("meta-data/instance-id") == "i-0123456789abcdef0"


def test_unreachable_service_raises_after_the_deadline(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(_instance())
    imds_server.set_available("i-0123456789abcdef0", False)
    with pytest.raises(ImdsUnavailable):
        ImdsClient(endpoint=url, deadline_seconds=0.5).identity_document()


def test_disabled_metadata_service_fails_fast(imds_server: ImdsServer) -> None:
    url = imds_server.add_instance(_instance())
    imds_server.set_available("i-0123456789abcdef0", False, mode="disabled")
    with pytest.raises(ImdsUnavailable, match="403"):
        ImdsClient(endpoint=url, deadline_seconds=30).token()


def test_role_name_and_tags(imds_server: ImdsServer) -> None:
    inst = _instance(role_name="AnnexRole", tags={"Name": "x"})
    client = ImdsClient(endpoint=imds_server.add_instance(inst))
    assert client.role_name() == "AnnexRole"
    assert client.instance_tags_enabled()
    assert client.instance_tag("Name") == "x"
    assert client.instance_tag("missing") is None


def test_tags_disabled_is_detected(imds_server: ImdsServer) -> None:
    client = ImdsClient(endpoint=imds_server.add_instance(_instance()))
    assert not client.instance_tags_enabled()
