import Conntrack
import NetworkAddress
import OS
import Reaper

/// The seam between the reap pipeline and the kernel: what the executor asks of sock_diag and
/// conntrack. `WorkerReapKernel` does it for real on the kernel workers; unit tests use a fake.
public protocol ReapKernel: Sendable {
    /// Ends up to `request.limit` of the backend's sockets in the request's scope, in every
    /// namespace the pool reaps, asking `stillRuns` before each: a pass over many namespaces stops
    /// where it is once the backend answers.
    func reap(_ request: KernelReapRequest, while stillRuns: @escaping @Sendable () -> Bool) async -> [NamespaceReport]
    /// The stuck detector's pass over a pool: ends at most `limit` condemned connections.
    func scanStuck(_ pool: PoolConfiguration, limit: Int, dryRun: Bool, namespaces: NamespaceSelection?) async -> [NamespaceReport]
    /// The backend's own established sockets: when their newest segment arrived.
    func evidence(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async -> SegmentEvidence
    /// How many established connections the backend has (for a paced close).
    func countConnections(toward backend: Endpoint, transports: Set<TransportProtocol>, namespaces: NamespaceSelection?) async -> Int
    /// Subscribes to conntrack's announcements of new flows toward (or NAT'd to) the backend in each
    /// of the namespaces; each one goes to `announce`, a lost batch to `lost(false)`, a read that
    /// failed (the announcements stopped there) to `lost(true)`. True when every namespace announces
    /// (its conntrack tracks flows), so walks can be a mere safety net.
    func watchNewFlows(
        _ key: BackendKey, transports: Set<TransportProtocol>, zones: ConntrackZones, namespaces: NamespaceSelection?,
        announce: @escaping @Sendable (AnnouncedFlow) -> Void, lost: @escaping @Sendable (_ stopped: Bool) -> Void
    ) async -> Bool
    func unwatchNewFlows(_ key: BackendKey) async
    /// Ends exactly the flow an announcement named (its socket by 4-tuple, then its entry).
    func endFlow(_ flow: AnnouncedFlow, dryRun: Bool) async -> [NamespaceReport]
    /// Every established TCP connection toward the pool's backends (the agent's own left out), with
    /// what tcp_info says of the data on it, in every namespace the pool works in.
    func census(_ pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> [ConnectionSample]
    /// Ends the one connection a census named, if a fresh look finds it the same socket and still
    /// carrying no data; otherwise leaves it (the report then lists nothing).
    func endQuietConnection(_ connection: ConnectionSample, dryRun: Bool) async -> [NamespaceReport]
    /// The pool's established TCP connections per backend, and how many of them retransmit now
    /// (the retransmit timer runs and has fired at least once): what early detection reads.
    func retransmissions(of pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> RetransmissionCount
}

extension ReapKernel {
    /// A kernel that cannot look (a test double) sees no connections: no early signal.
    public func retransmissions(of pool: PoolConfiguration, namespaces: NamespaceSelection?) async -> RetransmissionCount {
        RetransmissionCount()
    }
}

/// Per backend: established connections, and those retransmitting.
public struct RetransmissionCount: Sendable, Equatable {
    public var connections: [Endpoint: Int] = [:]
    public var retransmitting: [Endpoint: Int] = [:]
    /// A sentinel's retransmission (or loss-probe) timer runs: data is out, unacknowledged.
    public var armed = false
    /// The smallest RTO among the sentinels when they were picked; nil when none reported one.
    public var shortestRTO: Duration?

    public init(connections: [Endpoint: Int] = [:], retransmitting: [Endpoint: Int] = [:]) {
        self.connections = connections
        self.retransmitting = retransmitting
    }
}

public struct KernelReapRequest: Sendable, Equatable {
    public var backend: Endpoint
    public var transports: Set<TransportProtocol>
    public var scope: ReapScope
    public var limit: Int
    public var dryRun: Bool
    public var namespaces: NamespaceSelection?
    /// Re-enumerate `netns: all` first: a namespace made since the last listing may hold its sockets.
    public var refreshNamespaces: Bool
    /// The conntrack zones whose entries go (the pool's `conntrack_zones`).
    public var zones: ConntrackZones

    public init(
        backend: Endpoint, transports: Set<TransportProtocol>, scope: ReapScope, limit: Int, dryRun: Bool,
        namespaces: NamespaceSelection?, refreshNamespaces: Bool = false, zones: ConntrackZones = .standard
    ) {
        self.zones = zones
        self.backend = backend
        self.transports = transports
        self.scope = scope
        self.limit = limit
        self.dryRun = dryRun
        self.namespaces = namespaces
        self.refreshNamespaces = refreshNamespaces
    }
}

/// One namespace's part of a pass: its report, or why it could not run there.
public struct NamespaceReport: Sendable {
    /// The namespace file; nil for the agent's own.
    public var namespace: String?
    public var report: PurgeReport?
    public var failure: String?
    /// The system call that failed, when one did (entering the namespace, opening its sockets).
    public var error: SystemCallError?
    /// A stuck scan found every backend of the pool stuck at once and ended nothing (`StuckVerdict`).
    public var localFault = false

    public init(namespace: String?, report: PurgeReport) {
        self.namespace = namespace
        self.report = report
    }

    public init(namespace: String?, failure: String, error: SystemCallError? = nil) {
        self.namespace = namespace
        self.failure = failure
        self.error = error
    }
}
