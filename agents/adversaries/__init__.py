"""The attack lab: a catalogue of techniques, adversary profiles built from it, a scorecard.

Each :class:`~agents.adversaries.model.Technique` sends real traffic at a live gateway (or
an in-process one) and says what the gateway must do about it: the problem code it
answers, whether it raises an alert, whether it quarantines the agency. The runner
(:mod:`agents.adversaries.runner`) compares that with what was observed.
"""
