"""User tools behind the ``duet-verl`` command: ``bench``, ``report`` and ``score-prompts``."""
