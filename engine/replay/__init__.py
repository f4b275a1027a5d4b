"""`ordinance replay`: recorded traffic re-decided with a proposed policy set, every difference
reported. `records` rebuilds inputs from the trail, `reads` says which missing fields matter,
`sides` decides (a policy directory, or the recorded decision), `verdict` compares, `report`
aggregates, `render` formats, `run` streams it all (optionally in several processes)."""
