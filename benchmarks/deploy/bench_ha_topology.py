"""What a dead ops host costs, at the standard profile (the shipped timings of Prometheus, Alertmanager, the rules and
Patroni), on docs/deployment.md's highly available topology built on test hosts (tests/ha_topology.py: ops-a and
ops-b with a Prometheus, an Alertmanager, a reconciler replica and PostgreSQL under Patroni each, ops-c's etcd vote, a
bot host with Debian's node exporter and the example ccxt bot on the Kraken-compatible gateway); prints JSON.

The sequence of tests/deploy/test_ha_topology_e2e.py: the bot's session with the venue dropped (broker-reconnect heals
it and Prometheus verifies it) with the topology whole (the baseline of the same run), with ops-b killed whole and with
ops-a killed whole (its PostgreSQL the primary: Patroni promotes ops-b's once the leader key expires); then, ops-a still
dead, the bot's host killed whole with its bid resting. Fault -> verified is from the fault to the ledger's verified
end; the host's figures are from the kill to its order cancelled at the venue and to each page's arrival at the pager
(a receiver of the benchmark's own). The playbook's cooldowns are 0 (the same bot's faults follow each other);
everything else as shipped. Needs root, as the test does.

    timeout 1200 .venv/bin/python benchmarks/deploy/bench_ha_topology.py [--profile standard]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from ha_topology import run_sequence, topology  # noqa: E402

from trading_ops.stack.profiles import PROFILES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="standard")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ha-") as tmp, topology(Path(tmp), PROFILES[args.profile]) as topo:
        run = run_sequence(topo)
        measured = run["measured"]
        healthy = measured["fault_to_verified_healthy_seconds"]
        pages = sorted(f"{labels['alertname']} {labels.get('instance', '')}" for _, labels in topo.pager.since(0))
    out = {
        **measured,
        "fault_to_verified_over_healthy_seconds": {
            dead: round(measured[f"fault_to_verified_{dead}_seconds"] - healthy, 1)
            for dead in ("ops_b_dead", "ops_a_dead")
        },
        "verified_by": run["verified_by"],
        "pages_at_the_pager": pages,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
