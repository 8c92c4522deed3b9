"""The connectivity check function: reaches the collector from inside the AWS account."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from stacks.function_role import PythonFunction


class ConnectivityCheck(Construct):
    """`function`: `{"host", "port", "timeout"}` in, what it reached out."""

    function: lambda_.Function

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        self.function = PythonFunction(
            self,
            "Check",
            source="connectivity",
            entry="handler",
            description="condor_annex: check the pool's collector is reachable from AWS",
            timeout=Duration.seconds(70),
        ).function
