"""Policy state: the admission engine, executor filtering, policy store and governance.

Kept light on purpose: import the submodule you need
(``from icn_p2p.policy.admission import evaluate``).
"""
