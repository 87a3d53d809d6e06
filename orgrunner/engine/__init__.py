"""The engine: the organization and its accounts, credentials, and a run from plan to apply in task workers."""
