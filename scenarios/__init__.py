"""The rehearsal: scenario files, virtual time, the simulated world, results.

``pasarela run SCENARIO.toml`` loads a scenario (:mod:`scenarios.model`), runs it in
virtual time (:mod:`scenarios.virtual`, :mod:`scenarios.simulation`) through the
production gateway, and writes ``results.json`` (:mod:`scenarios.runner`,
:mod:`scenarios.results`).
"""
