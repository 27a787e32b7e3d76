"""Bus workers: one loop (poll, commit, backoff, dead-letter) and the handlers bound to it."""
