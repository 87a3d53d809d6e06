"""The records: the journal, the audit log, their hash chains, the report and the state folder."""
