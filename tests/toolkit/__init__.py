"""Tools and agents the tests configure by import path (tests/ is on PYTHONPATH for them)."""
