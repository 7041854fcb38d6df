"""The embedded default: synthetic verifiable tasks, their reward, a tiny local model and its warm start, and the
quickstart that trains it with DUET and GRPO through verl (``duet-verl quickstart``)."""
