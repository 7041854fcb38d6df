"""DUET's thin adapters into verl 0.9.1: registration, config check, estimator, trainer hooks, agent loop and the
rollout server's stream monitor. Every touch of a verl or Ray internal lives in :mod:`duet_verl.adapters.compat`."""
