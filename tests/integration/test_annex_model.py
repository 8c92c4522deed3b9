"""The annex model (`condor_annex.annex`): what belongs to an annex, decided one way, and ending it.

Ownership needs BOTH marks: the client token `NAME_<GUID>` and the annex tag set at launch. A
resource with one mark only is reported and never touched.
"""

from __future__ import annotations

import uuid

from condor_annex import annex, contract, spot
from condor_annex.create import create_annex
from tests.integration import annex_env as _annex_env

minimal_annex_env = _annex_env.minimal_annex_env  # the fixture, shared by this module


def _launch(env, *, token=None, tag=None):
    """One instance made outside condor_annex, with the given client token and annex tag."""
    args = {
        "ImageId": env.ami_id,
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": "m5.large",
    }
    if token:
        args["ClientToken"] = token
    if tag:
        args["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": contract.TAG_ANNEX_NAME, "Value": tag}]}
        ]
    return env.admin.ec2.run_instances(**args)["Instances"][0]["InstanceId"]


def _state(env, instance_id):
    found = env.clients.ec2.describe_instances(InstanceIds=[instance_id])
    return found["Reservations"][0]["Instances"][0]["State"]["Name"]


def _create(env, name, **kw):
    return create_annex(
        env.request(name, **kw), settings=env.settings, clients=env.clients, hooks=env.hooks()
    )


def test_an_instance_with_only_the_token_or_only_the_tag_is_reported_and_never_ended(
    minimal_annex_env,
):
    env = minimal_annex_env
    made = _create(env, "model", count=2)
    token_only = _launch(env, token=contract.new_client_token("model"))
    tag_only = _launch(env, token="hand-made", tag="model")
    other_token = _launch(env, token=contract.new_client_token("model_x"), tag="model")

    found = annex.find(env.clients.ec2, "model")
    assert found.instance_ids == sorted(made.instance_ids)
    assert {u.resource_id for u in found.unowned} == {token_only, tag_only, other_token}

    ended = annex.end(
        found,
        ec2=env.clients.ec2,
        s3=env.clients.s3,
        bucket=env.settings.config_bucket,
        scheduler=env.clients.scheduler,
    )
    assert sorted(ended.terminated_instances) == sorted(made.instance_ids)
    assert ended.errors == []
    assert len(ended.unowned) == 3
    for stray in (token_only, tag_only, other_token):
        assert _state(env, stray) == "running"
    assert contract.config_key("model") not in env.objects()
    assert contract.lease_key("model") not in env.objects()
    assert contract.schedule_name("model") not in env.schedules()

    again = annex.end(annex.find(env.clients.ec2, "model"), ec2=env.clients.ec2)
    assert not again.changed
    env.admin.ec2.terminate_instances(InstanceIds=[token_only, tag_only, other_token])


def test_a_name_that_prefixes_another_owns_nothing_of_it(minimal_annex_env):
    env = minimal_annex_env
    longer = _create(env, "pre_fix", count=1)
    assert annex.find(env.clients.ec2, "pre").empty
    assert annex.find(env.clients.ec2, "pre").unowned == []
    everything = annex.find_all(env.clients.ec2)
    assert everything["pre_fix"].instance_ids == longer.instance_ids
    assert "pre" not in everything
    annex.end(annex.find(env.clients.ec2, "pre_fix"), ec2=env.clients.ec2)


def test_a_spot_fleet_annex_owns_its_fleet_instances_and_launch_template(minimal_annex_env):
    env = minimal_annex_env
    made = _create(
        env, "fleety", slots=2, spot_instance_types=spot.parse_instance_types(["m5.large"])
    )
    env.clients.ec2.get_waiter("instance_exists").wait(
        Filters=[{"Name": f"tag:{contract.SPOT_FLEET_REQUEST_ID_TAG}", "Values": [made.fleet_id]}],
        WaiterConfig={"Delay": 1, "MaxAttempts": 20},
    )
    found = annex.find(env.clients.ec2, "fleety")
    assert found.fleet_ids() == [made.fleet_id]
    assert found.launch_template_id == made.launch_template_id
    assert len(found.instances) + len(found.awaiting_fleet_tag) == 2
    assert all(annex.fleet_id_of(i) == made.fleet_id for i in found.instances)

    ended = annex.end(found, ec2=env.clients.ec2)
    assert ended.cancelled_fleets == [made.fleet_id]
    assert ended.deleted_launch_template == contract.launch_template_name("fleety")
    assert contract.launch_template_name("fleety") not in env.launch_templates()
    assert annex.find(env.clients.ec2, "fleety").empty


def test_one_refused_termination_does_not_keep_the_rest_running(minimal_annex_env):
    env = minimal_annex_env
    made = _create(env, "partial", count=2)
    found = annex.find(env.clients.ec2, "partial")
    # An instance that no longer exists stands in for one this identity may not end.
    found.instances.append({"InstanceId": "i-" + uuid.uuid4().hex[:17]})
    ended = annex.end(
        found,
        ec2=env.clients.ec2,
        s3=env.clients.s3,
        bucket=env.settings.config_bucket,
        scheduler=env.clients.scheduler,
    )
    assert sorted(ended.terminated_instances) == sorted(made.instance_ids)
    assert len(ended.errors) == 1 and ended.first_failure is not None
    # The lease record stays while something failed, so the sweep tries again.
    assert contract.lease_key("partial") in env.objects()
    assert contract.config_key("partial") not in env.objects()
    env.clients.s3.delete_object(
        Bucket=env.settings.config_bucket, Key=contract.lease_key("partial")
    )
