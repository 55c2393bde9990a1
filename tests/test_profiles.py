"""Profiles and user options: pure functions, no hub."""

import pytest

from loophub.errors import InvalidInput
from loophub.pool import GIB
from loophub.spawner.form import render_form
from loophub.spawner.profiles import (
    Limits,
    options_from_form,
    parse_profiles,
    resolve_choice,
    visible_profiles,
)

RAW = [
    {"slug": "small", "display_name": "Small", "cpu": 0.5, "mem": "2G", "default": True},
    {"slug": "gpu1", "display_name": "1 GPU", "cpu": 4, "mem": "16G", "gpu": 1,
     "gpu_type": "a100", "max_runtime": 8 * 3600, "groups": ["ml"]},
]
LIMITS = Limits(cpu=2, mem=8 * GIB, gpu=1, max_runtime=4 * 3600)


def test_profiles_parse_and_are_visible_by_group():
    profiles = parse_profiles(RAW)
    assert profiles[1].mem == 16 * GIB and profiles[1].groups == ("ml",)
    assert [p.slug for p in visible_profiles(profiles, set())] == ["small"]
    assert [p.slug for p in visible_profiles(profiles, {"ml"})] == ["small", "gpu1"]
    assert len(visible_profiles(profiles, set(), admin=True)) == 2


@pytest.mark.parametrize("bad, message", [
    ([{"slug": "Big Box", "cpu": 1, "mem": "1G"}], "slug"),
    ([{"slug": "custom", "cpu": 1, "mem": "1G"}], "slug"),
    ([{"slug": "a", "cpu": 0, "mem": "1G"}], "profiles[0].cpu"),
    ([{"slug": "a", "cpu": 1, "mem": "1G", "gpu": -1}], "profiles[0].gpu"),
    ([{"slug": "a", "cpu": 1, "mem": "lots"}], "mem"),
    ([{"slug": "a", "cpu": 1, "mem": "1G", "image": "x"}], "unknown keys"),
    ([{"slug": "a", "cpu": 1, "mem": "1G"}, {"slug": "a", "cpu": 1, "mem": "1G"}], "duplicate"),
])
def test_bad_profiles_say_where(bad, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_profiles(bad)


def test_choice_from_a_profile_is_rebuilt_every_time():
    profiles = parse_profiles(RAW)
    default = resolve_choice({}, profiles, LIMITS, True)
    assert (default.profile, default.cpu, default.mem) == ("small", 0.5, 2 * GIB)
    gpu = resolve_choice({"profile": "gpu1", "runtime": "2"}, profiles, LIMITS, True)
    assert (gpu.gpu, gpu.gpu_type, gpu.runtime) == (1, "a100", 7200)
    with pytest.raises(InvalidInput, match="fixes cpu"):
        resolve_choice({"profile": "small", "gpu": 1}, profiles, LIMITS, True)
    with pytest.raises(InvalidInput, match="does not exist or is not available"):
        resolve_choice({"profile": "gpu1"}, visible_profiles(profiles, set()), LIMITS, True)


def test_custom_sizes_stay_within_limits():
    profiles = parse_profiles(RAW)
    choice = resolve_choice({"profile": "custom", "cpu": "1.5", "mem": "3G", "gpu": 1},
                            profiles, LIMITS, True)
    assert (choice.cpu, choice.mem, choice.gpu, choice.runtime) == (1.5, 3 * GIB, 1, 4 * 3600)
    for options, message in [
        ({"profile": "custom", "cpu": 3, "mem": "1G"}, "more than your limit of 2"),
        ({"profile": "custom", "cpu": 1, "mem": "9G"}, "more than your limit of 8 GiB"),
        ({"profile": "custom", "cpu": 1, "mem": "1G", "gpu": 0.5}, "whole number"),
        ({"profile": "custom", "cpu": 1}, "needs ['mem']"),
        ({"profile": "custom", "cpu": "many", "mem": "1G"}, "not a number"),
        ({"profile": "custom", "cpu": 1, "mem": "1G", "gpu_type": "a100;rm"}, "GPU type"),
        ({"profile": "custom", "cpu": 1, "mem": "1G", "runtime": 5}, "at most 4 hours"),
        ({"profile": "small", "image": "evil"}, "unknown options"),
    ]:
        with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
            resolve_choice(options, profiles, LIMITS, True)
    with pytest.raises(InvalidInput, match="turned off"):
        resolve_choice({"profile": "custom", "cpu": 1, "mem": "1G"}, profiles, LIMITS, False)


def test_form_round_trip():
    options = options_from_form({"profile": ["custom"], "cpu": ["1"], "mem": ["2"],
                                 "gpu": ["1"], "runtime": [""]})
    assert options == {"profile": "custom", "cpu": "1", "mem": "2G", "gpu": "1"}
    choice = resolve_choice(options, parse_profiles(RAW), LIMITS, True)
    assert choice.mem == 2 * GIB
    html = render_form(parse_profiles(RAW), LIMITS, True, {"profile": "small"})
    assert 'value="small" checked' in html and "Custom size" in html and "1 GPU" in html
    assert "<script" not in html


def test_form_rounds_sizes_and_shows_custom_fields_only_for_custom():
    odd = 25_228_029_952  # a detected machine's memory: 23.496... GiB
    profiles = parse_profiles([{"slug": "all", "display_name": "All", "cpu": 2, "mem": odd}])
    limits = Limits(cpu=2, mem=odd, gpu=0)
    html = render_form(profiles, limits, True, {"profile": "all"})
    assert "23.5 GiB" in html and "23.496" not in html and "23.4961" not in html
    custom = html[html.index('<div class="loophub-custom"'):]
    assert "display:none" in custom.split(">", 1)[0]  # another choice: fields hidden
    assert 'max="23.25"' in custom  # the form never offers more than the limit
    chosen = render_form(profiles, limits, True, {"profile": "custom"})
    assert "display:flex" in chosen[chosen.index('<div class="loophub-custom"'):].split(">")[0]
    assert "onchange=" in html  # picking "Custom size" shows them (no <script> needed)
    with pytest.raises(InvalidInput, match=r"limit of 23\.5 GiB"):
        resolve_choice({"profile": "custom", "cpu": 1, "mem": "30G"}, profiles, limits, True)
