

def test_small_cpu_figures_are_not_printed_as_zero():
    from icn_p2p.policy.admission import _fmt_num

    assert _fmt_num(0.000125) == "0.000125"
    assert _fmt_num(9.25) == "9.25" and _fmt_num(10.0) == "10.0"
