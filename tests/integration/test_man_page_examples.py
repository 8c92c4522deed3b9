"""The old condor_annex man page's examples and synopsis forms, run against the local AWS.

Each runs as printed, plus the options that say where the pool and the setup are (`-collector`,
`-config-file`, `-pool-signing-key-file`, `-trust-domain`, `-yes`: `env.cli_args()`). One change:
the second example's `p2.xlarge` is a retired instance type the local AWS does not offer, so a
current GPU type stands in. `-check-setup` needs the deployed setup stack: tests/integration/
test_setup_verbs.py. `status <condor_status options>` against a real collector: tests/pool/.
"""

from __future__ import annotations

import base64
import io
import json

from condor_annex import contract, images
from condor_annex.cli.main import CliContext, main
from tests.integration import annex_env as _annex_env
from tests.integration.annex_env import AnnexEnv

minimal_annex_env = _annex_env.minimal_annex_env


def _cli(env: AnnexEnv, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ctx = CliContext(
        stdout=out,
        stderr=err,
        clients=lambda region, profile: env.clients,
        create_hooks=env.hooks(progress=None),
        pool_shutdown=lambda name: 0,
    )
    code = main([*argv, *env.cli_args()], ctx)
    return code, out.getvalue(), err.getvalue()


def _user_data(env: AnnexEnv, instance_id: str) -> bytes:
    value = env.admin.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")[
        "UserData"
    ].get("Value", "")
    return base64.b64decode(value)


def test_first_example_starts_one_instance_of_the_default_image_made_ready_at_boot(
    minimal_annex_env: AnnexEnv,
) -> None:
    env = minimal_annex_env
    code, out, err = _cli(env, "-count", "1", "-annex-name", "MyFirstAnnex")
    assert code == 0, err
    parameter = env.local.client("ssm").get_parameter(
        Name=images.DEFAULT_IMAGE_PARAMETERS["x86_64"]
    )["Parameter"]["Value"]
    [instance] = env.live_instances("MyFirstAnnex")
    assert instance["ImageId"] == parameter
    user_data = _user_data(env, instance["InstanceId"])
    assert images.first_boot_script().encode() in user_data
    assert "stock-al2023" in out

    # The synopsis's other forms on that annex: extend, -status [-classad].
    code, out, err = _cli(env, "-annex-name", "MyFirstAnnex", "-duration", "2")
    assert code == 0, err
    code, out, err = _cli(env, "-annex-name", "MyFirstAnnex", "-status")
    assert code == 0, err
    assert instance["InstanceId"] in out
    code, out, err = _cli(env, "-annex-name", "MyFirstAnnex", "-status", "-classad")
    assert code == 0, err
    assert f'EC2InstanceID = "{instance["InstanceId"]}"' in out
    code, out, err = _cli(env, "off", "-annex-name", "MyFirstAnnex")
    assert code == 0, err
    assert env.live_instances("MyFirstAnnex") == []


def test_second_example_hundred_gpu_instances_for_two_owners(minimal_annex_env: AnnexEnv) -> None:
    env = minimal_annex_env
    code, _, err = _cli(
        env, "-count", "100", "-annex-name", "MySecondAnnex",
        "-aws-on-demand-instance-type", "g4dn.xlarge", "-owner", "big, little",
    )  # fmt: skip
    assert code == 0, err
    instances = env.live_instances("MySecondAnnex")
    assert len(instances) == 100
    assert {i["InstanceType"] for i in instances} == {"g4dn.xlarge"}
    code, _, err = _cli(env, "off", "-annex-name", "MySecondAnnex", "-drain-timeout", "0")
    assert code == 0, err


def test_own_user_data_reaches_a_default_image_instance_beside_the_first_boot_script(
    minimal_annex_env: AnnexEnv,
) -> None:
    env = minimal_annex_env
    mine = "#cloud-config\nruncmd:\n  - [touch, /var/tmp/mine]\n"
    code, _, err = _cli(env, "-count", "1", "-annex-name", "withdata", "-aws-user-data", mine)
    assert code == 0, err
    [instance] = env.live_instances("withdata")
    user_data = _user_data(env, instance["InstanceId"]).decode()
    assert mine in user_data and "Content-Type: multipart/mixed" in user_data


def test_an_annex_ready_image_gets_only_the_users_own_user_data(
    minimal_annex_env: AnnexEnv,
) -> None:
    env = minimal_annex_env
    ec2 = env.admin.ec2  # the admin baking an annex-ready image
    [seed] = ec2.run_instances(ImageId=env.ami_id, MinCount=1, MaxCount=1)["Instances"]
    ready = ec2.create_image(InstanceId=seed["InstanceId"], Name="my-annex-image")["ImageId"]
    ec2.create_tags(Resources=[ready], Tags=[{"Key": images.READY_IMAGE_TAG, "Value": "1"}])
    ec2.terminate_instances(InstanceIds=[seed["InstanceId"]])
    code, out, err = _cli(env, "-check-image", ready)
    assert code == 0, err
    assert "annex-ready" in out
    code, out, err = _cli(env, "-check-image", "default", "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == images.ImageKind.STOCK_AL2023.value
    code, _, err = _cli(
        env, "-count", "1", "-annex-name", "ready", "-aws-on-demand-ami-id", ready,
        "-aws-user-data", "#!/bin/sh\necho mine\n",
    )  # fmt: skip
    assert code == 0, err
    [instance] = env.live_instances("ready")
    assert _user_data(env, instance["InstanceId"]) == b"#!/bin/sh\necho mine\n"
    assert contract.config_key("ready") in env.objects()
