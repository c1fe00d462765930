"""Reliability and security: hostile inputs, faults mid-run, secrets, and a bounded soak."""
