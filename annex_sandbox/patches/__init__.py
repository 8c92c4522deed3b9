"""Fidelity fixes applied to moto in this process before the local AWS serves.

Each fix is one small named function that wraps or replaces a specific moto method and cites
the AWS behaviour it reproduces; docs/EMULATOR.md lists them with the test proving each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from annex_sandbox.patches.capacity import (
    describe_spot_price_history_fixture_prices,
    run_instances_answers_injected_capacity_errors,
)
from annex_sandbox.patches.cloudformation import (
    cloudformation_change_set_without_changes_fails,
    cloudformation_change_sets_belong_to_their_stack,
    cloudformation_creates_bucket_policies,
    cloudformation_deletes_managed_policies,
    cloudformation_executing_a_change_set_clears_the_stacks_change_sets,
    cloudformation_failed_update_rolls_back,
    cloudformation_no_value_removes_list_elements,
    cloudformation_resolves_s3_template_urls,
    cloudformation_security_groups_admit_ipv6_ranges,
    cloudformation_ssm_parameter_generated_name,
    cloudformation_stack_outputs_from_change_sets,
    cloudformation_updates_security_group_rules_in_place,
    cloudformation_use_previous_value_of_ssm_parameters,
    cloudformation_validates_vpc_id_parameters,
)
from annex_sandbox.patches.ec2_fleet import (
    delete_fleets_ends_every_instance,
    ec2_fleet_idempotent_on_client_token,
    ec2_fleet_launches_from_templates_across_pools,
    maintain_fleets_replace_lost_instances,
)
from annex_sandbox.patches.ec2_instances import (
    describe_instances_filters,
    ec2_dry_runs_launch_nothing,
    run_instances_idempotent_on_client_token,
    run_instances_profile_on_every_instance,
)
from annex_sandbox.patches.iam import (
    cloudformation_roles_attach_managed_policy_arns,
    iam_authorizes_against_resource_arns,
    iam_inline_policies_stored_as_json,
    iam_service_linked_roles_named_and_unique_like_aws,
    iam_trust_policy_account_principals,
)
from annex_sandbox.patches.s3 import s3_bucket_policies_judged_with_their_conditions
from annex_sandbox.patches.scheduler import scheduler_update_replaces_every_field
from annex_sandbox.patches.spot_fleet import (
    cancelled_spot_fleets_stay_visible,
    describe_spot_fleet_requests_returns_the_config_as_given,
    request_spot_fleet_accepts_aws_configs,
    spot_fleet_instances_get_profile_and_fleet_tag,
    spot_fleet_launches_from_launch_templates,
)

# Order matters where two patches wrap the same method: the later one wraps the earlier one.
PATCHES: tuple[Callable[[], None], ...] = (
    run_instances_profile_on_every_instance,
    run_instances_idempotent_on_client_token,
    describe_instances_filters,
    # Outermost on RunInstances: a pool without capacity fails before the token ledger records.
    run_instances_answers_injected_capacity_errors,
    describe_spot_price_history_fixture_prices,
    request_spot_fleet_accepts_aws_configs,
    spot_fleet_instances_get_profile_and_fleet_tag,
    spot_fleet_launches_from_launch_templates,
    describe_spot_fleet_requests_returns_the_config_as_given,
    cancelled_spot_fleets_stay_visible,
    ec2_fleet_launches_from_templates_across_pools,
    ec2_fleet_idempotent_on_client_token,
    delete_fleets_ends_every_instance,
    maintain_fleets_replace_lost_instances,
    cloudformation_stack_outputs_from_change_sets,
    # Wraps the outputs fix: the executed change set is still there while that one reads it.
    cloudformation_executing_a_change_set_clears_the_stacks_change_sets,
    # Outermost on ExecuteChangeSet: a failure in any of the above rolls the update back.
    cloudformation_failed_update_rolls_back,
    cloudformation_change_sets_belong_to_their_stack,
    cloudformation_change_set_without_changes_fails,
    cloudformation_use_previous_value_of_ssm_parameters,
    cloudformation_updates_security_group_rules_in_place,
    cloudformation_security_groups_admit_ipv6_ranges,
    cloudformation_validates_vpc_id_parameters,
    cloudformation_deletes_managed_policies,
    cloudformation_creates_bucket_policies,
    s3_bucket_policies_judged_with_their_conditions,
    scheduler_update_replaces_every_field,
    cloudformation_resolves_s3_template_urls,
    cloudformation_ssm_parameter_generated_name,
    cloudformation_no_value_removes_list_elements,
    iam_trust_policy_account_principals,
    iam_authorizes_against_resource_arns,
    iam_inline_policies_stored_as_json,
    cloudformation_roles_attach_managed_policy_arns,
    iam_service_linked_roles_named_and_unique_like_aws,
    # Outermost on the four launch/create operations: a dry run reaches none of the above.
    ec2_dry_runs_launch_nothing,
)

_applied = False
_lock = threading.Lock()


def apply_all() -> None:
    """Apply every patch once per process (later calls do nothing)."""
    global _applied
    with _lock:
        if _applied:
            return
        for patch in PATCHES:
            patch()
        _applied = True
