"""Command-line parsing: the reference's single-dash flags and their double-dash twins.

Every long option is registered twice (`-annex-name` and `--annex-name`). Unambiguous prefixes
work (`-annex` for `-annex-name`), as in HTCondor's own tools; ambiguous ones are refused. Durations accept units (`90s`, `50m`, `2h`,
`1d`); a bare number means hours, as in the reference tool.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, Optional

from condor_annex import __version__, spot
from condor_annex.errors import InvalidInput

VERB_STATUS = "status"
VERB_OFF = "off"
VERBS = (VERB_STATUS, VERB_OFF)
OFF_MODES = ("peaceful", "graceful", "fast")
"""condor_off's shutdown modes `off` passes on; peaceful (running jobs finish) first."""
PASSTHROUGH = "--"
"""`status -- ARGS`: ARGS go to condor_status."""

_DURATION_RE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhd]?)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, default_unit: str = "h") -> int:
    """`90s`, `50m`, `2h`, `1d` or a bare number of `default_unit` → whole seconds (rounded)."""
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise InvalidInput(
            f"{text!r} is not a duration",
            next_step="write it as 3600s, 50m, 2h, 1d, or a number of hours such as 0.5",
        )
    unit = (match.group("unit") or default_unit).lower()
    return round(float(match.group("number")) * _UNIT_SECONDS[unit])


def parse_owners(text: str) -> tuple[str, ...]:
    """`-owner "big, little"` → ("big", "little"): commas and/or blanks separate, as in the old
    tool's stringListMember list; duplicates dropped."""
    owners = tuple(dict.fromkeys(o for o in re.split(r"[,\s]+", text) if o))
    if not owners:
        raise InvalidInput("-owner names nobody", next_step="pass -owner USER[, USER]*")
    return owners


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors become InvalidInput (exit code 2, one line on stderr)."""

    def error(self, message: str) -> Any:
        raise InvalidInput(message, next_step="see `condor_annex -help`")


def _twin(name: str) -> list[str]:
    return [f"-{name}", f"--{name}"]


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="condor_annex",
        description="Burst an HTCondor pool into AWS (on-demand or Spot Fleet annexes).",
        add_help=False,
    )
    p.add_argument(*_twin("help"), "-h", action="help", help="show this help and exit")
    p.add_argument(*_twin("version"), action="version", version=f"condor_annex {__version__}")
    p.add_argument("verb", nargs="?", choices=VERBS, help="status | off (omit to create/extend)")

    setup = p.add_argument_group("setup")
    setup.add_argument(
        *_twin("setup"),
        nargs="*",
        metavar="KEY_FILE",
        default=None,
        help="deploy the setup: [ACCESS_KEY_FILE [SECRET_KEY_FILE]]",
    )
    setup.add_argument(*_twin("check-setup"), action="store_true", help="check the setup")
    setup.add_argument(
        *_twin("check-image"),
        dest="check_image",
        metavar="AMI",
        help="say whether AMI is annex-ready or made ready at first boot ('default': the "
        "region's default image)",
    )
    setup.add_argument(
        *_twin("destroy-setup"), action="store_true", help="remove the setup (no annex may run)"
    )
    setup.add_argument(
        *_twin("pool-cidr"), action="append", default=[], help="CIDR allowed to reach 9618"
    )

    annex = p.add_argument_group("annex")
    annex.add_argument(*_twin("annex-name"), dest="annex_name", help="the annex's name")
    annex.add_argument(*_twin("count"), type=int, help="on-demand instances to start")
    annex.add_argument(*_twin("slots"), type=int, help="Spot Fleet target capacity (weighted)")
    annex.add_argument(*_twin("duration"), help="lease (default 50m; bare number = hours)")
    annex.add_argument(*_twin("idle"), help="idle time before an instance stops (default 15m)")
    annex.add_argument(
        *_twin("aws-on-demand-instance-type"),
        dest="instance_types",
        action="append",
        default=[],
        help="instance type (repeatable or comma-separated: the next is tried when one has no "
        "capacity)",
    )
    fleet = annex.add_mutually_exclusive_group()
    fleet.add_argument(
        *_twin("aws-fleet"),
        dest="aws_fleet",
        action="store_const",
        const=True,
        default=None,
        help="launch through EC2 Fleet (Spot with -slots, on-demand with -count) "
        "(default: ANNEX_DEFAULT_AWS_FLEET)",
    )
    fleet.add_argument(
        *_twin("no-aws-fleet"),
        dest="aws_fleet",
        action="store_const",
        const=False,
        help="launch with RunInstances / Spot Fleet even if ANNEX_DEFAULT_AWS_FLEET is set",
    )
    annex.add_argument(
        *_twin("aws-fleet-type"),
        dest="ec2_fleet_type",
        choices=("instant", "maintain"),
        help="EC2 Fleet type: instant (one-shot) or maintain (refilled after interruptions); "
        "default maintain for Spot, instant for on-demand",
    )
    annex.add_argument(
        *_twin("aws-on-demand-allocation-strategy"),
        dest="on_demand_allocation_strategy",
        choices=("lowest-price", "prioritized"),
        default="lowest-price",
        help="EC2 Fleet on-demand: cheapest pool first, or the instance types in the order given",
    )
    annex.add_argument(
        *_twin("max-price-per-hour"),
        dest="max_price_per_hour",
        help="refuse an annex that could cost more USD per hour; fleets carry the cap into AWS "
        "(default: ANNEX_DEFAULT_MAX_PRICE_PER_HOUR)",
    )
    annex.add_argument(
        *_twin("aws-on-demand-ami-id"),
        *_twin("aws-ami-id"),
        dest="ami_id",
        help="annex-compatible AMI (also used for Spot Fleet)",
    )
    annex.add_argument(
        *_twin("aws-spot-instance-types"),
        dest="spot_instance_types",
        action="append",
        default=[],
        help="TYPE[:WEIGHT],... (repeatable), e.g. m5.large:2,c5.xlarge:4",
    )
    annex.add_argument(*_twin("aws-spot-fleet-config-file"), dest="spot_fleet_config_file")
    annex.add_argument(
        *_twin("aws-spot-allocation-strategy"),
        dest="spot_allocation_strategy",
        choices=spot.ALLOCATION_STRATEGIES,
        default=spot.DEFAULT_ALLOCATION_STRATEGY,
    )
    annex.add_argument(
        *_twin("aws-spot-fleet-type"),
        dest="spot_fleet_type",
        choices=spot.FLEET_TYPES,
        default=spot.DEFAULT_FLEET_TYPE,
    )
    annex.add_argument(*_twin("aws-key-name"), *_twin("aws-on-demand-key-name"), dest="key_name")
    annex.add_argument(*_twin("aws-subnet-id"), dest="subnet_ids", action="append", default=[])
    annex.add_argument(
        *_twin("tag"), nargs=2, metavar=("KEY", "VALUE"), action="append", default=[]
    )
    owners = annex.add_mutually_exclusive_group()
    owners.add_argument(
        *_twin("owner"),
        help="USER[, USER]*: whose jobs may run on the annex (default: you)",
    )
    owners.add_argument(
        *_twin("no-owner"), dest="no_owner", action="store_true", help="anyone's jobs may run"
    )
    annex.add_argument(
        *_twin("config-dir"),
        dest="config_dir",
        metavar="DIR",
        help="add DIR's config files to each instance's config.d (after the annex's own)",
    )
    user_data = annex.add_mutually_exclusive_group()
    user_data.add_argument(*_twin("aws-user-data"), dest="user_data")
    user_data.add_argument(*_twin("aws-user-data-file"), dest="user_data_file")
    annex.add_argument(*_twin("start-expression"), dest="start_expression")
    annex.add_argument(*_twin("token-file"), dest="token_file")
    annex.add_argument(*_twin("pool-signing-key-file"), dest="signing_key_file")
    annex.add_argument(*_twin("trust-domain"), dest="trust_domain")
    annex.add_argument(*_twin("collector"), help="HOST[:PORT] (default: COLLECTOR_HOST)")

    status = p.add_argument_group("status and off")
    status.add_argument(
        *_twin("status"), dest="status_flag", action="store_true", help="the same as `status`"
    )
    status.add_argument(
        *_twin("classad"),
        *_twin("classads"),
        dest="classad",
        action="store_true",
        help="status: print the annex's instances as ClassAds",
    )
    status.add_argument(
        *_twin("drain-timeout"),
        dest="drain_timeout",
        metavar="DURATION",
        help="off: wait this long for jobs to finish before terminating (default 30m; a bare "
        "number is minutes; 0 terminates now)",
    )
    off_mode = status.add_mutually_exclusive_group()
    for mode in OFF_MODES:
        off_mode.add_argument(
            *_twin(mode),
            dest="off_mode",
            action="store_const",
            const=mode,
            help=f"off: condor_off -{mode} (default -{OFF_MODES[0]})",
        )

    general = p.add_argument_group("general")
    general.add_argument(*_twin("aws-region"), dest="region")
    general.add_argument(*_twin("aws-profile"), dest="profile")
    general.add_argument(*_twin("config-file"), dest="config_file", help="user config to use")
    general.add_argument(*_twin("yes"), action="store_true", help="do not ask for confirmation")
    general.add_argument(*_twin("json"), action="store_true", help="machine-readable output")
    return p


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse and cross-check the flags; raises InvalidInput on any usage error."""
    words = list(argv) if argv is not None else sys.argv[1:]
    passthrough: list[str] = []
    if PASSTHROUGH in words:
        at = words.index(PASSTHROUGH)
        words, passthrough = words[:at], words[at + 1 :]
    args = build_parser().parse_args(words)
    if args.region:
        from condor_annex.target import validate_region

        validate_region(args.region)
    args.passthrough = passthrough
    if args.status_flag:
        if args.verb not in (None, VERB_STATUS):
            raise InvalidInput("give -status or off, not both")
        args.verb = VERB_STATUS
    if passthrough and args.verb != VERB_STATUS:
        raise InvalidInput(
            f"arguments after `{PASSTHROUGH}` go to condor_status: only `status` takes them"
        )
    if args.classad and args.verb != VERB_STATUS:
        raise InvalidInput("-classad goes with status")
    if (args.drain_timeout is not None or args.off_mode) and args.verb != VERB_OFF:
        raise InvalidInput("-drain-timeout, -peaceful, -graceful and -fast go with off")
    if args.setup is not None and len(args.setup) > 2:
        raise InvalidInput("-setup takes at most ACCESS_KEY_FILE and SECRET_KEY_FILE")
    modes = [
        args.setup is not None,
        args.check_setup,
        args.destroy_setup,
        args.verb is not None,
        args.check_image is not None,
    ]
    if sum(modes) > 1:
        raise InvalidInput(
            "give one of -setup, -check-setup, -destroy-setup, -check-image, status or off"
        )
    if args.count is not None and args.slots is not None:
        raise InvalidInput("give -count (on-demand) or -slots (Spot Fleet), not both")
    if args.verb == VERB_OFF and not args.annex_name:
        raise InvalidInput("off needs -annex-name NAME")
    if not any(modes) and not args.annex_name:
        raise InvalidInput(
            "nothing to do",
            next_step="create with `condor_annex -annex-name NAME -count N`, or see -help",
        )
    return args


def mode_of(args: argparse.Namespace) -> str:
    """setup | check-setup | destroy-setup | status | off | create | extend."""
    if args.setup is not None:
        return "setup"
    if args.check_setup:
        return "check-setup"
    if args.destroy_setup:
        return "destroy-setup"
    if args.check_image is not None:
        return "check-image"
    if args.verb:
        return str(args.verb)
    if args.count is None and args.slots is None:
        if args.duration is None:
            raise InvalidInput(
                "say -count N (on-demand) or -slots N (Spot Fleet) to create an annex, or "
                "-duration D to extend an existing annex's lease"
            )
        return "extend"
    return "create"
