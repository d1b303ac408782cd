"""Paper trading: a simulated venue, a demo bot that trades on it, and the faults it can inject."""
