"""The rule pack: prometheus/rules/ rendered from one template per rule file and one file of values (thresholds,
`for:` durations, selectors, runbook links), so a user tunes the rules without forking them."""
