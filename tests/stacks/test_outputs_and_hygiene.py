"""Stack outputs follow the contract; no policy grants a `*` or `s3:*` action."""

from __future__ import annotations

from condor_annex import contract
from tests.stacks.policies import statements


def test_outputs_are_exactly_the_contract_keys(synthesized_setup):
    outputs = synthesized_setup.template["Outputs"]
    assert sorted(outputs) == sorted(o.key for o in contract.STACK_OUTPUTS)
    for output in contract.STACK_OUTPUTS:
        assert outputs[output.key]["Description"] == output.description


def test_no_allow_statement_grants_a_wildcard_action(synthesized_setup):
    for statement in statements(synthesized_setup.template):
        if statement.allows:
            for action in statement.actions:
                assert action != "*" and not action.endswith(":*"), (statement.resource_id, action)
                assert "*" not in action, (statement.resource_id, action)


def test_only_the_tls_deny_mentions_s3_star(synthesized_setup):
    starred = [s for s in statements(synthesized_setup.template) if "s3:*" in s.actions]
    assert starred and all(
        s.body["Effect"] == "Deny"
        and s.body["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in starred
    )


def test_roles_attach_only_policies_defined_in_the_stack(synthesized_setup):
    template = synthesized_setup.template
    attached = [
        arn
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::IAM::Role"
        for arn in resource["Properties"].get("ManagedPolicyArns", [])
    ]
    assert attached  # the Spot Fleet role's policy
    for arn in attached:
        assert template["Resources"][arn["Ref"]]["Type"] == "AWS::IAM::ManagedPolicy"


def test_resource_counts_do_not_multiply(synthesized_setup):
    assertions = synthesized_setup.assertions
    assertions.resource_count_is("AWS::S3::Bucket", 2)
    assertions.resource_count_is("AWS::IAM::Role", 6)
    assertions.resource_count_is("AWS::IAM::InstanceProfile", 1)
    assertions.resource_count_is("AWS::IAM::ManagedPolicy", 3)
    assertions.resource_count_is("AWS::Lambda::Function", 3)
    assertions.resource_count_is("AWS::Events::Rule", 1)
    assertions.resource_count_is("AWS::EC2::SecurityGroup", 1)
