"""The command line: parsing, printing, exit codes; the plan as a person reads it."""
