"""Scenario files: shipped ones validate at both scales; malformed ones fail with the field path."""

import tomllib

import pytest

from simulations import schema as sc

BASE = """
[scenario]
name = "t"

[[nodes]]
name = "n"
count = {small = 2, full = 7}

[[coops]]
id = "c"
policy = "basic-cooperative.json"

[[timeline]]
at = 0
action = "set_policy"
coop = "c"

[[assertions]]
name = "ok"
expect = "tasks.lost == 0"
"""


def load(text, scale="small"):
    return sc.parse_scenario(tomllib.loads(text), scale=scale, source="test.toml")


@pytest.mark.parametrize("path", sc.shipped_scenarios(), ids=lambda p: p.stem)
@pytest.mark.parametrize("scale", sc.SCALES)
def test_shipped_scenarios_validate(path, scale):
    scenario = sc.load_scenario(path, scale=scale)
    assert scenario.scenario.name == path.stem
    assert scenario.assertions
    for coop in scenario.coops:
        body = coop.load_policy()
        assert body["coop_id"] == coop.id and body["governance_domain"] is None


def test_every_required_scenario_is_shipped():
    names = {p.stem for p in sc.shipped_scenarios()}
    assert {"quickstart", "timebank", "research-gdpr", "housing", "partition", "churn"} <= names


def test_scale_picks_values():
    assert load(BASE).total_nodes == 2
    assert load(BASE, "full").total_nodes == 7
    with pytest.raises(sc.ScenarioError, match="unknown scale"):
        load(BASE, "huge")


@pytest.mark.parametrize("patch,where", [
    ('[[timeline]]\nat = 1\naction = "submit"\nmember = "m"\ncoop = "c"\nrate = -1\ncount = 2\n', "timeline.1.submit.rate"),
    ('[[timeline]]\nat = 1\naction = "submit"\nmember = "m"\ncoop = "c"\n', "give exactly one of count or duration"),
    ('[[timeline]]\nat = 1\naction = "submit"\nmember = "m"\ncoop = "c"\ncount = 1\nmodule = "fork"\n', "unknown module 'fork'"),
    ('[[timeline]]\nat = 1\naction = "explode"\n', "timeline.1"),
    ('[[timeline]]\nat = 1\naction = "kill"\nnode = "ghost"\n', "unknown node selector 'ghost'"),
    ('[[timeline]]\nat = 1\naction = "kill"\nnode = 9\n', "node 9 out of range"),
    ('[[timeline]]\nat = 1\naction = "kill"\nnode = "n.5"\n', "group 'n' has nodes .0 to .1"),
    ('[[timeline]]\nat = 1\naction = "set_policy"\ncoop = "nope"\n', "unknown coop 'nope'"),
    ('[[assertions]]\nname = "bad"\nexpect = "tasks.lost ="\n', "assertions.1.expect"),
    ('[[nodes]]\nname = "n"\n', "node group names must be unique"),
    ('[[nodes]]\nname = "m"\nroles = ["boss"]\n', "nodes.1.roles.0"),
    ('[[nodes]]\nname = "m"\nconfig = { coops = ["x"] }\n', "set by the simulator"),
    ('[[coops]]\nid = "d"\npolicy = "no-such-policy.json"\n', "coops.d.policy: policy file"),
    ('[[coops]]\nid = "e"\npolicy = { default_quota = { cpu_hours_per_month = -1 } }\n', "coops.e.policy"),
    ('[[members]]\nid = "x"\ncolour = "red"\n', "members.0.colour"),
])
def test_malformed_scenarios_name_the_field(patch, where):
    with pytest.raises(sc.ScenarioError) as err:
        load(BASE + patch)
    assert where in str(err.value)
    assert str(err.value).startswith("test.toml")


def test_missing_sections_and_bad_toml(tmp_path):
    with pytest.raises(sc.ScenarioError, match="nodes: Field required"):
        load('[scenario]\nname = "x"\n[[coops]]\nid = "c"\npolicy = "timebank.json"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\n")
    with pytest.raises(sc.ScenarioError, match="not valid TOML"):
        sc.load_scenario(bad)
    with pytest.raises(sc.ScenarioError, match="file not found"):
        sc.load_scenario(tmp_path / "absent.toml")


def test_selectors():
    s = load(BASE.replace('[[coops]]', '[[nodes]]\nname = "x"\nroles = ["executor"]\n\n[[coops]]'))
    assert s.resolve("*") == [0, 1, 2]
    assert s.resolve("n") == [0, 1] and s.resolve("n.1") == [1] and s.resolve("x") == [2]
    assert s.resolve("executors") == [0, 1, 2] and s.resolve("submitters") == [0, 1]
    assert s.resolve(["x", 0, "n"]) == [2, 0, 1]
    assert s.node_name(1) == "n1" and s.node_name(2) == "x"


def test_policy_patch_and_sandbox():
    s = load(BASE.replace('policy = "basic-cooperative.json"',
                          'policy = "timebank.json"\npatch = { default_quota = { max_concurrent_tasks = 9 } }'))
    body = s.coop("c").load_policy()
    assert body["default_quota"]["max_concurrent_tasks"] == 9
    assert body["default_quota"]["cpu_hours_per_month"] == 10.0  # the rest of the file is kept
    assert body["coop_id"] == "c" and body["governance_domain"] is None


def _advance(line: str) -> sc.AdvanceClock:
    s = load(BASE + f'[[timeline]]\nat = 1\naction = "advance_clock"\n{line}\n')
    return s.timeline[-1]


def test_advance_clock_to_the_next_month():
    from datetime import datetime, timezone

    def ms(*args):
        return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)

    a = _advance("")  # the default: the next UTC month
    assert a.to == "next_month"
    now = ms(2026, 11, 23, 18, 0)
    assert now + a.amount_ms(now) == ms(2026, 12, 1, 0, 1)
    dec = ms(2026, 12, 31, 23, 59, 59)
    assert dec + a.amount_ms(dec) == ms(2027, 1, 1, 0, 1)
    assert _advance("days = 2").amount_ms(now) == 2 * 86_400_000
    assert _advance("hours = 1.5").amount_ms(now) == 5_400_000


@pytest.mark.parametrize("line,where", [
    ("days = 2\nhours = 1", "give one of to, days or hours"),
    ('to = "next_month"\ndays = 2', "give one of to, days or hours"),
    ('to = "next_year"', "timeline.1.advance_clock.to"),
    ("days = -1", "timeline.1.advance_clock.days"),
])
def test_advance_clock_amount_errors(line, where):
    with pytest.raises(sc.ScenarioError) as err:
        load(BASE + f'[[timeline]]\nat = 1\naction = "advance_clock"\n{line}\n')
    assert where in str(err.value)


def test_kill_pick():
    s = load(BASE + '[[timeline]]\nat = 1\naction = "kill"\nnode = "n"\npick = "busiest"\n')
    assert s.timeline[-1].pick == "busiest"
    with pytest.raises(sc.ScenarioError, match="timeline.1.kill.pick"):
        load(BASE + '[[timeline]]\nat = 1\naction = "kill"\nnode = "n"\npick = "random"\n')


def test_sequential_submit_and_settled_wait():
    s = load(BASE + '[[timeline]]\nat = 1\naction = "submit"\nmember = "m"\ncoop = "c"\ncount = 2\n'
                    'sequential = true\n[[timeline]]\nat = 2\naction = "wait"\nuntil = "settled"\n')
    assert s.timeline[1].sequential is True and s.timeline[2].until == "settled"
    assert load(BASE + '[[timeline]]\nat = 1\naction = "submit"\nmember = "m"\ncoop = "c"\ncount = 2\n'
                       ).timeline[1].sequential is False
    with pytest.raises(sc.ScenarioError, match="timeline.1.wait.until"):
        load(BASE + '[[timeline]]\nat = 1\naction = "wait"\nuntil = "quiet"\n')
