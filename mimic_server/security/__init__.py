"""Who may do what (policy) and the record of what was done (audit)."""
