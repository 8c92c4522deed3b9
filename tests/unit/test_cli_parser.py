"""The command line: reference flags and their twins, durations, verbs, usage errors."""

from __future__ import annotations

import pytest

from condor_annex.cli.parser import mode_of, parse_args, parse_duration
from condor_annex.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50m", 3000), ("2h", 7200), ("3600s", 3600), ("1d", 86400), ("0.5", 1800), ("2", 7200)],
)
def test_durations_accept_units_and_bare_hours(text, seconds):
    assert parse_duration(text) == seconds


def test_bare_duration_uses_the_default_unit_given():
    assert parse_duration("90", default_unit="s") == 90


@pytest.mark.parametrize("text", ["", "abc", "-1h", "5 weeks", "1h30m"])
def test_bad_durations_are_invalid_input(text):
    with pytest.raises(InvalidInput, match="duration"):
        parse_duration(text)


def test_single_and_double_dash_flags_are_twins():
    one = parse_args(["-annex-name", "a", "-count", "3", "-aws-region", "us-west-2"])
    two = parse_args(["--annex-name", "a", "--count", "3", "--aws-region", "us-west-2"])
    assert vars(one) == vars(two)
    assert one.annex_name == "a"
    assert one.count == 3


def test_unambiguous_prefixes_work_as_in_htcondor_tools():
    assert parse_args(["-annex", "a", "-count", "3"]).annex_name == "a"


def test_ambiguous_prefixes_are_refused():
    with pytest.raises(InvalidInput, match="ambiguous"):
        parse_args(["-annex-name", "a", "-count", "3", "-aws-s", "x"])


def test_count_means_create_and_duration_alone_means_extend():
    assert mode_of(parse_args(["-annex-name", "a", "-count", "3"])) == "create"
    assert mode_of(parse_args(["-annex-name", "a", "-slots", "4"])) == "create"
    assert mode_of(parse_args(["-annex-name", "a", "-duration", "2h"])) == "extend"


def test_annex_name_alone_says_what_is_missing():
    with pytest.raises(InvalidInput, match="-count"):
        mode_of(parse_args(["-annex-name", "a"]))


def test_status_and_off_are_verbs():
    assert mode_of(parse_args(["status"])) == "status"
    assert mode_of(parse_args(["off", "-annex-name", "a"])) == "off"


def test_off_needs_an_annex_name():
    with pytest.raises(InvalidInput, match="-annex-name"):
        parse_args(["off"])


def test_setup_takes_up_to_two_key_files():
    assert parse_args(["-setup"]).setup == []
    assert parse_args(["-setup", "ak", "sk"]).setup == ["ak", "sk"]
    with pytest.raises(InvalidInput):
        parse_args(["-setup", "a", "b", "c"])


def test_setup_modes_exclude_each_other():
    with pytest.raises(InvalidInput, match="one of"):
        parse_args(["-check-setup", "-destroy-setup"])


def test_count_and_slots_exclude_each_other():
    with pytest.raises(InvalidInput, match="not both"):
        parse_args(["-annex-name", "a", "-count", "1", "-slots", "2"])


def test_repeatable_flags_collect_every_value():
    args = parse_args(
        [
            "-annex-name",
            "a",
            "-slots",
            "4",
            "-tag",
            "k1",
            "v1",
            "--tag",
            "k2",
            "v2",
            "-aws-subnet-id",
            "subnet-1",
            "-aws-subnet-id",
            "subnet-2",
            "-aws-spot-instance-types",
            "m5.large:2",
            "-aws-spot-instance-types",
            "c5.xlarge:4",
            "-pool-cidr",
            "10.0.0.0/8",
        ]
    )
    assert args.tag == [["k1", "v1"], ["k2", "v2"]]
    assert args.subnet_ids == ["subnet-1", "subnet-2"]
    assert args.spot_instance_types == ["m5.large:2", "c5.xlarge:4"]
    assert args.pool_cidr == ["10.0.0.0/8"]


def test_user_data_and_user_data_file_exclude_each_other():
    with pytest.raises(InvalidInput):
        parse_args(
            ["-annex-name", "a", "-count", "1", "-aws-user-data", "x", "-aws-user-data-file", "f"]
        )


def test_ami_flag_has_a_generic_alias():
    assert parse_args(["-annex-name", "a", "-count", "1", "-aws-ami-id", "ami-1"]).ami_id == "ami-1"


def test_unknown_flag_is_invalid_input_naming_it():
    with pytest.raises(InvalidInput, match="-bogus"):
        parse_args(["-annex-name", "a", "-count", "1", "-bogus"])


def test_bad_count_is_invalid_input():
    with pytest.raises(InvalidInput):
        parse_args(["-annex-name", "a", "-count", "three"])


@pytest.mark.parametrize(
    ("collector", "expected"),
    [
        ("cm.example.org", ("cm.example.org", 9618)),
        ("cm.example.org:9619", ("cm.example.org", 9619)),
        ("<10.0.0.5:9618?addrs=10.0.0.5-9618&sock=collector>", ("10.0.0.5", 9618)),
        ("[2001:db8::1]:9620", ("2001:db8::1", 9620)),
    ],
)
def test_collector_addresses_parse_as_htcondor_writes_them(collector, expected) -> None:
    from condor_annex.collector import parse_collector

    assert parse_collector(collector) == expected


@pytest.mark.parametrize("bad", ["", "host:notaport", "host:70000", ":9618"])
def test_bad_collector_addresses_are_refused(bad) -> None:
    from condor_annex.collector import parse_collector
    from condor_annex.errors import InvalidInput

    with pytest.raises(InvalidInput):
        parse_collector(bad)
