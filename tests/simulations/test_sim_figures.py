"""Figures computed from observations: re-placement after kills, months, the clock mapping."""

import pytest

from simulations import schema as sc
from simulations.engine import Observations, Simulation, TaskObs
from simulations.figures import quota_figures, replacement_figures

SCENARIO = sc.parse_scenario({
    "scenario": {"name": "f"},
    "nodes": [{"name": "desk", "roles": ["submitter"]}, {"name": "exec", "count": 2, "roles": ["executor"]}],
    "coops": [{"id": "c", "policy": {"default_quota": {"cpu_hours_per_month": 0.001, "max_concurrent_tasks": 4,
                                                       "max_priority": "High"}}}],
})
DEAD, OTHER = "did:key:dead", "did:key:other"


def task(task_id, steps, state="completed"):
    t = TaskObs(task_id, 0, "did:icn:m", "c", "m", [], "Normal", 0, state)
    t.steps = steps
    return t


def obs_with(*tasks):
    obs = Observations(SCENARIO, "small", "processes", "SIGKILL")
    obs.kills.append({"node": 1, "did": DEAD, "t_ns": 10_000 * 1_000_000, "signal": "kill", "running": 1})
    for t in tasks:
        obs.tasks[t.task_id] = t
    return obs


def test_replacement_measures_kill_to_detect_and_to_placed_again():
    hit = task("a", [["admitted", 9_000, ""], ["placed", 9_100, f"placed on {DEAD}"],
                     ["running", 9_200, f"running on {DEAD}"],
                     ["admitted", 12_500, f"executor {DEAD} failed: lost executor {DEAD} stopped answering"],
                     ["placed", 12_600, f"placed on {OTHER}"], ["running", 12_700, ""], ["completed", 13_000, ""]])
    in_flight = task("b", [["placed", 9_000, f"placed on {DEAD}"], ["running", 9_100, f"running on {DEAD}"],
                           ["completed", 10_050, ""]])
    # accepted and finished before the kill, both answers read after it
    both_in_flight = task("e", [["placed", 9_000, f"placed on {DEAD}"], ["running", 10_020, f"running on {DEAD}"],
                                ["completed", 10_030, ""]])
    elsewhere = task("c", [["placed", 9_000, f"placed on {OTHER}"], ["running", 9_100, ""], ["completed", 11_000, ""]])
    never = task("d", [["running", 9_500, f"running on {DEAD}"], ["failed", 20_000, "gave up"]], state="failed")
    r = replacement_figures(obs_with(hit, in_flight, both_in_flight, elsewhere, never))
    assert r["kills"] == 1 and r["tasks_hit"] == 2 and r["replaced"] == 1 and r["completed_in_flight"] == 2
    assert r["replaced_p50_ms"] == 2_600 and r["replaced_max_ms"] == 2_600
    assert r["detect_p50_ms"] == 2_500 and r["detect_max_ms"] == 10_000
    by_id = {h["task_id"]: h for h in r["per_task"]}
    assert by_id["d"]["replaced_ms"] is None and by_id["a"]["why"].endswith("stopped answering")


def test_no_kills_no_figures():
    obs = obs_with()
    obs.kills.clear()
    r = replacement_figures(obs)
    assert r["tasks_hit"] == 0 and r["replaced_p50_ms"] is None and r["replaced_max_ms"] is None


def test_quota_judges_each_month_and_keeps_the_worst():
    obs = obs_with()
    m = "did:icn:m"
    obs.usage_by_month = {"2026-11": {"c": {m: {"cpu_ms": 7_200.0}}},  # 0.002 h: twice the quota
                          "2026-12": {"c": {m: {"cpu_ms": 360.0}}}}
    obs.usage = obs.usage_by_month["2026-12"]
    per, worst = quota_figures(obs)
    assert per["c"][m]["month"] == "2026-11" and per["c"][m]["overshoot_pct"] == 100.0
    assert worst["member"] == m and worst["month"] == "2026-11"


def test_node_clock_maps_back_to_the_wall_clock(tmp_path):
    sim = Simulation(SCENARIO, workdir=tmp_path)
    assert sim.to_wall_ms(5_000) == 5_000
    sim._offsets.append((10_000 * 1_000_000, 86_400_000))  # a day ahead from wall 10 s
    assert sim.to_wall_ms(86_400_000 + 12_000) == 12_000  # read after the advance
    assert sim.to_wall_ms(9_000) == 9_000  # read before it


@pytest.mark.slow
async def test_process_nodes_advance_together_and_a_later_node_starts_ahead(tmp_path):
    """Child processes move their clocks at one instant; a node started later starts at the offset."""
    import trio

    from icn_p2p.node.harness import node_config
    from simulations.backends import ProcessBackend

    day = 86_400_000
    async with trio.open_nursery() as nursery:
        backend = ProcessBackend(nursery, tmp_path)
        try:
            await backend.start(0, node_config(tmp_path / "nodes", 0))
            assert (await backend.advance_clock(day))["nodes"] == 1
            later = await backend.start(1, node_config(tmp_path / "nodes", 1))
            assert (await later.call("clock"))["offset_ms"] == day
            r = await backend.advance_clock(day)
            assert r["nodes"] == 2 and r["offset_ms"] == 2 * day and r["spread_ms"] < 50
            for i in range(2):
                c = await backend.handles[i].call("clock")
                assert c["offset_ms"] == 2 * day
                assert abs(c["now_ms"] - (c["t_ns"] // 1_000_000 + 2 * day)) < 5
        finally:
            await backend.stop_all()
            nursery.cancel_scope.cancel()
