"""A Lambda function with its own log group and a role holding only inline, visible policies."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.lambda_code import RUNTIME, function_code
from stacks.nag import acknowledge_wildcard_resources

LOG_RETENTION = logs.RetentionDays.ONE_MONTH


class PythonFunction(Construct):
    """`function` running `lambda/<source>/handler.py:<entry>` with `role` and `log_group`."""

    function: lambda_.Function
    role: iam.Role
    log_group: logs.LogGroup

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        source: str,
        entry: str,
        description: str,
        statements: Sequence[iam.PolicyStatement] = (),
        environment: Optional[Mapping[str, str]] = None,
        timeout: Optional[Duration] = None,
    ) -> None:
        super().__init__(scope, id)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY
        )
        logging_statement = iam.PolicyStatement(
            sid="WriteOwnLogs",
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[f"{self.log_group.log_group_arn}:*"],
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=description,
            inline_policies={
                "Function": iam.PolicyDocument(statements=[logging_statement, *statements])
            },
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            handler=f"handler.{entry}",
            code=function_code(source),
            role=self.role,
            description=description,
            timeout=timeout or Duration.minutes(1),
            memory_size=256,
            environment=dict(environment or {}),
            log_group=self.log_group,
        )
        self.function.node.add_dependency(self.role)
        acknowledge_wildcard_resources(
            self.role,
            logging_statement.resources,
            "Lambda creates log streams with generated names under the function's own log "
            "group (`<log group ARN>:*`).",
        )
