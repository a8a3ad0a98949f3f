"""The soak's short version (``make soak`` runs it for 30 minutes; Tests/Soak/soak.py): the agent for
3 minutes with 100 backends flapping, a SIGHUP every second alternating good and bad configurations,
namespaces appearing and vanishing under `netns: all` and a stream of connections made and reaped.
Its process must not grow (fds, threads, RSS over the second half) and every reap must be accounted
for: audit lines, the destroyed-sockets counter and the clients' ECONNABORTED agree, backend by
backend. Three minutes catch a gross leak only; the long run is for slow ones."""

from __future__ import annotations

import os

from Soak.soak import run_soak

MINUTES = float(os.environ.get("SOAK_TEST_MINUTES", "3"))


def test_soak_stays_flat_and_accounts_for_every_reap(kernel_env, reaper_binary):
    result = run_soak(reaper_binary, MINUTES, out=print)
    figures = result.figures
    assert figures["audit_sockets"] > 100, result.report          # it did reap, in earnest
    assert figures["reloads_sent"]["bad"] >= MINUTES * 60 / 2 - 5, result.report
    assert figures["namespaces_made"] >= MINUTES * 60 / 3 - 5, result.report
    assert result.failures == [], result.report
