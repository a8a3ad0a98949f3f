import NetworkAddress

/// Whether a stuck scan's condemned connections may be ended: when every backend of a pool has one
/// at once, the fault is nearer to us (our link, a local rule, our NIC), not at any backend, and the
/// clients would reconnect into the same fault. One backend alone says nothing either way.
public enum StuckVerdict {
    public static func localFault(condemnedToward condemned: Set<Endpoint>, pool backends: [Endpoint]) -> Bool {
        backends.count >= 2 && backends.allSatisfy { condemned.contains($0) }
    }
}
