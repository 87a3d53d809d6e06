"""Inputs: settings, YAML config files, environment variables and the baseline, each validated once."""
