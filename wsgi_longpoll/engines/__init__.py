"""Storage engines: where a manager keeps the events of each category."""
