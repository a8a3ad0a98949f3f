"""The one test lab: what the kernel tests (Tests/Integration), the benchmarks, the demo and the
deployment tests stand up, drive and read. Import it as the package ``lab`` (Tests/pytest.ini and the
Makefile put Tests/ on the path).

- ``netns``: throwaway network namespaces (``Lab``, ``Namespace``, veth links, cleanup of what a killed
  run left), the test process's own calls inside a namespace (``in_netns``, ``http_get``), ``wait_for``.
- ``topology``: the standard client/server topology of the CLI tests and the ``Reaper`` runner.
- ``incident``: the seed incident: real nginx between streaming clients and three upstreams.
- ``peer``: the one traffic peer program (``python3 -m lab.peer ROLE``), every role speaking the
  JSON-lines protocol of ``peer/protocol.py``; ``traffic`` drives it (``Peer``, ``StreamClient``,
  ``BulkPeer``, ``ChurnPeer``, ``PeerProcess`` for any role's events).
- ``agent``: the one agent driver (``Agent``: log lines, endpoints, states, lifetime) and ``pool_yaml``.
- ``metrics``: the one logfmt and Prometheus text parser.
- ``analysis``: what the stream client recorded, per stream and per incident run.
- ``privileges``: the credentials of each deployment mode (setpriv shapes), /proc status, a test CA.
- ``bench``: the benchmarks' own two-namespace lab with bulk peers and machine-wide CPU readings.
"""
