"""Operator scheduling: cost models, critical-path plans, scheduled graphs on trial."""
