"""EC2 instance fidelity fixes: RunInstances idempotency, profiles, DescribeInstances filters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import moto.ec2.utils as ec2_utils
from moto.core.responses import ActionResult
from moto.ec2.responses.instances import InstanceResponse

from annex_sandbox.patches._util import (
    IdempotentParameterMismatch,
    aws_filter_match,
    fingerprint,
)

_LEDGER_LOCK = threading.Lock()
# Parameters that do not describe the launch itself: the token, and the query-protocol envelope.
_NOT_PART_OF_REQUEST = frozenset({"ClientToken", "Action", "Version"})


def run_instances_profile_on_every_instance() -> None:
    """Associate the requested instance profile with EVERY launched instance.

    moto associates `IamInstanceProfile` with the first instance of the reservation only; EC2
    launches all `MinCount..MaxCount` instances with it ("RunInstances", Amazon EC2 API Reference:
    https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html).
    """
    original: Callable[[InstanceResponse], ActionResult] = InstanceResponse.run_instances

    def run_instances(self: InstanceResponse) -> ActionResult:
        result = original(self)
        arn = self._get_param("IamInstanceProfile.Arn")
        name = self._get_param("IamInstanceProfile.Name")
        if arn or name:
            reservation: Any = result.result
            for instance in reservation.instances[1:]:
                if instance.id not in self.ec2_backend.iam_instance_profile_associations:
                    self.ec2_backend.associate_iam_instance_profile(
                        instance_id=instance.id,
                        iam_instance_profile_arn=arn,
                        iam_instance_profile_name=None if arn else name,
                    )
        return result

    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]


def run_instances_idempotent_on_client_token() -> None:
    """RunInstances with a known ClientToken returns the original reservation, launching nothing.

    "Ensure idempotency in Amazon EC2 API requests"
    (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html): a retry with the
    same client token and the same parameters returns the same result without launching again;
    the same token with different parameters fails with `IdempotentParameterMismatch`.
    moto launches a second reservation on every retry.
    """
    original: Callable[[InstanceResponse], ActionResult] = InstanceResponse.run_instances

    def run_instances(self: InstanceResponse) -> ActionResult:
        token = self._get_param("ClientToken")
        if not token:
            return original(self)
        params = {k: v for k, v in self.querystring.items() if k not in _NOT_PART_OF_REQUEST}
        digest = fingerprint(params)
        backend: Any = self.ec2_backend
        with _LEDGER_LOCK:
            # Stored on the backend so moto's reset forgets it with everything else.
            ledger: dict[str, tuple[str, Any]] = backend.__dict__.setdefault(
                "_sandbox_run_instances_tokens", {}
            )
            known = ledger.get(token)
            if known is not None:
                if known[0] != digest:
                    raise IdempotentParameterMismatch()
                return ActionResult(known[1])
            result = original(self)
            ledger[token] = (digest, result.result)
            return result

    InstanceResponse.run_instances = run_instances  # type: ignore[method-assign]


def _profile_arn(instance: Any) -> str | None:
    profile = getattr(instance, "iam_instance_profile", None)
    return profile.get("Arn") if isinstance(profile, dict) else None


# DescribeInstances filters the product uses that moto answers with HTTP 500
# ("DescribeInstances", Amazon EC2 API Reference, Request Parameters / Filter.N:
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstances.html).
_EXTRA_INSTANCE_FILTERS: dict[str, Callable[[Any], str | None]] = {
    "client-token": lambda instance: instance.client_token,
    "iam-instance-profile.arn": _profile_arn,
    "instance-lifecycle": lambda instance: instance.lifecycle,
}


def describe_instances_filters() -> None:
    """Support `client-token`, `iam-instance-profile.arn`, `instance-lifecycle` and wildcards.

    EC2 filter values accept `*` and `?` wildcards ("List and filter your resources", Amazon EC2
    User Guide: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Filtering.html); moto
    matches attribute filters exactly and raises NotImplementedError (HTTP 500) for the filters
    above.
    """
    original_passes: Callable[[Any, dict[str, Any]], bool] = ec2_utils.passes_filter_dict
    original_in_values: Callable[[Any, Any], bool] = ec2_utils.instance_value_in_filter_values

    def passes_filter_dict(instance: Any, filter_dict: dict[str, Any]) -> bool:
        rest: dict[str, Any] = {}
        for name, values in filter_dict.items():
            getter = _EXTRA_INSTANCE_FILTERS.get(name)
            if getter is None:
                rest[name] = values
            elif not aws_filter_match(getter(instance), list(values)):
                return False
        return original_passes(instance, rest)

    def instance_value_in_filter_values(instance_value: Any, filter_values: Any) -> bool:
        if isinstance(instance_value, str) and aws_filter_match(
            instance_value, list(filter_values)
        ):
            return True
        return original_in_values(instance_value, filter_values)

    ec2_utils.passes_filter_dict = passes_filter_dict
    ec2_utils.instance_value_in_filter_values = instance_value_in_filter_values


def ec2_dry_runs_launch_nothing() -> None:
    """`DryRun=true` on a launch or create answers `DryRunOperation` and creates nothing.

    "DryRun" (RunInstances, CreateLaunchTemplate, RequestSpotFleet, CreateFleet API reference):
    "Checks whether you have the required permissions for the action, without actually making
    the request ... If you have the required permissions, the error response is DryRunOperation."
    With the IAM engine on, it answers dry runs itself; moto, which answers them when the engine
    is switched off (benchmarks), ignores the flag on these four operations and launches.
    """
    from moto.ec2.responses.fleets import Fleets
    from moto.ec2.responses.instances import InstanceResponse
    from moto.ec2.responses.launch_templates import LaunchTemplates
    from moto.ec2.responses.spot_fleets import SpotFleets

    for cls, name in (
        (InstanceResponse, "run_instances"),
        (LaunchTemplates, "create_launch_template"),
        (SpotFleets, "request_spot_fleet"),
        (Fleets, "create_fleet"),
    ):
        original: Callable[[Any], Any] = getattr(cls, name)

        def checked(self: Any, _original: Callable[[Any], Any] = original) -> Any:
            self.error_on_dryrun()
            return _original(self)

        setattr(cls, name, checked)
