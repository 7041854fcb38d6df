"""verl trainer adapters (import verl)."""
