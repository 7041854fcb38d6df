"""duet-verl: DUET token-budget allocation for RL with verifiable rewards, as a verl plug-in."""

__version__ = "0.1.0"
