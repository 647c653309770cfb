"""Price catalogue, cost model and break-even."""
