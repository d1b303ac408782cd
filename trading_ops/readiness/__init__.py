"""The readiness verdict: may a paper bot go live, criterion by criterion (docs/readiness.md)."""
