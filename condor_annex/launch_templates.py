"""The per-annex launch template of a Spot Fleet annex: shared by the CLI and the lease Lambda.

boto3 and the standard library only: the lease function's bundle ships this module.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError


def delete_launch_template(ec2: Any, template_name: str) -> bool:
    """Delete the named launch template if it exists; False when there was none.

    Looked up with a name filter (an empty answer when absent, where `LaunchTemplateNames=[...]`
    and delete-by-name answer an error), confirmed by exact name, then deleted by id. A template
    deleted meanwhile is not an error; any other error is raised.
    """
    found = ec2.describe_launch_templates(
        Filters=[{"Name": "launch-template-name", "Values": [template_name]}]
    ).get("LaunchTemplates", [])
    deleted = False
    for template in found:
        if template.get("LaunchTemplateName") != template_name:
            continue  # a filter is not a promise of an exact match
        try:
            ec2.delete_launch_template(LaunchTemplateId=template["LaunchTemplateId"])
        except ClientError as exc:
            if "NotFound" not in str(exc.response.get("Error", {}).get("Code", "")):
                raise
        deleted = True
    return deleted
