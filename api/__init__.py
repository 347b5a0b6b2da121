"""The HTTP producer: validates, records, enqueues by task name. Never imports torch."""
