import NetworkAddress

/// One established connection toward a backend as a census saw it (sock_diag with tcp_info): enough
/// to name it for an exact destroy and to tell whether ending it would cut something in progress.
public struct ConnectionSample: Sendable, Equatable {
    public var backend: Endpoint
    public var local: Endpoint
    /// The peer as the socket names it: the backend, or its IPv4-mapped IPv6 form on a dual-stack socket.
    public var remote: Endpoint
    /// The kernel's socket cookie: a destroy then never hits a newer socket on the same 4-tuple.
    public var cookie: UInt64
    /// The namespace file it lives in; nil for the agent's own.
    public var namespace: String?
    public var unacked: UInt32
    public var sendQueue: UInt32
    public var receiveQueue: UInt32
    public var sinceDataSent: Duration
    public var sinceDataReceived: Duration
    public var owner: ConnectionOwner

    public init(
        backend: Endpoint, local: Endpoint, remote: Endpoint? = nil, cookie: UInt64, namespace: String? = nil, unacked: UInt32 = 0,
        sendQueue: UInt32 = 0, receiveQueue: UInt32 = 0, sinceDataSent: Duration, sinceDataReceived: Duration,
        owner: ConnectionOwner = ConnectionOwner(uid: 0)
    ) {
        self.owner = owner
        self.backend = backend
        self.local = local
        self.remote = remote ?? backend
        self.cookie = cookie
        self.namespace = namespace
        self.unacked = unacked
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.sinceDataSent = sinceDataSent
        self.sinceDataReceived = sinceDataReceived
    }

    /// A request sent this recently may still wait for its answer: ending the connection would fail it.
    /// (A stream that only receives, like a watch, resumes on a new connection; a cut request does not.)
    public static let requestGrace: Duration = .seconds(2)

    /// Ending it now would lose something: bytes unacknowledged or queued either way, or a request
    /// whose answer may still be on its way. Such a connection is never ended to rebalance.
    public var carriesData: Bool {
        unacked > 0 || sendQueue > 0 || receiveQueue > 0 || sinceDataSent < Self.requestGrace
    }

    /// How long nothing moved either way.
    public var quietFor: Duration { min(sinceDataSent, sinceDataReceived) }

    /// Quiet both ways this long: idle, whatever kind of client it is.
    public static let idleAfter: Duration = .seconds(1)

    /// Which connections go first, the greatest first. Idle ones first, the longest idle first. Among
    /// the rest (streams that keep receiving, like a watch) the one that sent nothing for longest:
    /// the least likely to wait for an answer (for a proxy's upstream leg of a stream that sends
    /// nothing, the oldest connection).
    public var preference: (Int, Duration) {
        quietFor >= Self.idleAfter ? (1, quietFor) : (0, sinceDataSent)
    }
}

/// The arithmetic of one rebalancing step over a census of a pool whose backends are all up: each
/// backend's fair share, whether the spread is within tolerance, who holds an excess, and which of
/// its connections to end. Pure; `ReapPolicy` schedules it.
public struct RebalancePlan: Sendable, Equatable {
    public var counts: [Endpoint: Int]
    /// Connections over backends: what each would hold if the pool were even.
    public var fairShare: Double
    /// How far from the fair share a backend may be: the tolerance, in connections.
    public var allowedDeviation: Double

    public init(backends: [Endpoint], connections: [ConnectionSample], tolerancePercent: Double) {
        var counts = Dictionary(uniqueKeysWithValues: backends.map { ($0, 0) })
        for connection in connections where counts[connection.backend] != nil { counts[connection.backend]! += 1 }
        self.counts = counts
        let total = counts.values.reduce(0, +)
        fairShare = backends.isEmpty ? 0 : Double(total) / Double(backends.count)
        allowedDeviation = fairShare * tolerancePercent / 100
    }

    public var total: Int { counts.values.reduce(0, +) }

    /// Every backend within the tolerance of its fair share, or no move can make the spread closer
    /// (1-1-0 stays 1-1-0 whatever moves): nothing to do.
    public var withinTolerance: Bool {
        spread <= 1 || counts.values.allSatisfy { abs(Double($0) - fairShare) <= allowedDeviation }
    }

    /// The most connections any backend holds minus the fewest.
    public var spread: Int { (counts.values.max() ?? 0) - (counts.values.min() ?? 0) }

    /// Connections a backend holds above its fair share (rounded up, so ending them never takes it
    /// below), the most a rebalance may take from it; at least one while it holds two more than the
    /// emptiest backend and more than its share (2-2-0 becomes 1-2-1: an integer spread can be no closer).
    public func excess(of backend: Endpoint) -> Int {
        let count = counts[backend] ?? 0
        guard Double(count) > fairShare, count - (counts.values.min() ?? 0) >= 2 else { return 0 }
        return max(1, count - Int(fairShare.rounded(.up)))
    }

    /// Backends holding more than their fair share, in a fixed order (a dictionary's varies by process:
    /// a seeded policy must make the same picks every run).
    public var overShare: [Endpoint] {
        counts.keys.filter { excess(of: $0) > 0 }.sorted { $0.description < $1.description }
    }

    /// The connection to end on `backend`: never one that carries data; among the rest one of the
    /// preferred quarter (see `ConnectionSample.preference`), picked at random so the same client is
    /// not always the one moved.
    public static func choose(
        on backend: Endpoint, from connections: [ConnectionSample], random: inout some RandomNumberGenerator
    ) -> ConnectionSample? {
        let quiet = connections.filter { $0.backend == backend && !$0.carriesData }.sorted { $0.preference > $1.preference }
        guard !quiet.isEmpty else { return nil }
        let quietest = quiet.prefix(max(1, quiet.count / 4))
        return quietest.randomElement(using: &random)
    }

    /// Closes per second for a pool of `connections`: the operator's `rebalance_rate` if set (a fleet
    /// divides what its backends absorb by its nodes), else `sharePerSecond` of them (1%), at least
    /// `floorPerSecond` (1.5: "a few per second on a small pool") so a pool of a hundred converges
    /// within a minute even behind a balancer that sends some reconnects back where they were, at most
    /// `ceilingPerSecond` (5) so even a large pool's reconnects stay a trickle next to its steady load.
    public static func closesPerSecond(connections: Int, settings: RebalanceSettings) -> Double {
        if let fixed = settings.fixedPerSecond { return fixed }
        return min(max(Double(connections) * settings.sharePerSecond, settings.floorPerSecond), settings.ceilingPerSecond)
    }
}

/// A pool's rebalancing knobs, as the policy reads them.
public struct RebalanceSettings: Sendable, Equatable {
    public var tolerancePercent: Double
    /// A backend must have been up this long before connections are moved to it: one that flaps
    /// never stays up long enough to pull anything. 10 s is also nginx's default `fail_timeout`: its
    /// connects to the backend failed while it was down, and for that long nginx places nothing
    /// there, so earlier closes would only reconnect to the others. Doubled for each further return
    /// within `flapWindow` (a crash loop's up times grow too), up to `maxHoldDown`.
    public var holdDown: Duration
    public var flapWindow: Duration
    public var maxHoldDown: Duration
    public var sharePerSecond: Double
    public var floorPerSecond: Double
    public var ceilingPerSecond: Double
    /// Pool option `rebalance_rate`: this node's closes per second, whatever the pool's size.
    public var fixedPerSecond: Double?
    /// Pool option `rebalance_owner`: whose connections are counted and moved.
    public var owner: RebalanceOwner
    /// While nothing is to be moved, a census this often keeps the connections gauge current.
    public var censusEvery: Duration

    public init(
        tolerancePercent: Double = 20, holdDown: Duration = .seconds(10), flapWindow: Duration = .seconds(600),
        maxHoldDown: Duration = .seconds(300), sharePerSecond: Double = 0.01,
        floorPerSecond: Double = 1.5, ceilingPerSecond: Double = 5, fixedPerSecond: Double? = nil, censusEvery: Duration = .seconds(10),
        owner: RebalanceOwner = .auto
    ) {
        self.owner = owner
        self.tolerancePercent = tolerancePercent
        self.holdDown = holdDown
        self.flapWindow = flapWindow
        self.maxHoldDown = maxHoldDown
        self.sharePerSecond = sharePerSecond
        self.floorPerSecond = floorPerSecond
        self.ceilingPerSecond = ceilingPerSecond
        self.fixedPerSecond = fixedPerSecond
        self.censusEvery = censusEvery
    }
}

extension RebalanceSettings {
    /// The hold-down of a backend that came back `returns` times within the flap window: the base for
    /// the first return (or none, at start), doubled for each one more.
    public func holdDown(afterReturns returns: Int) -> Duration {
        let doublings = min(max(returns - 1, 0), 16)
        return min(holdDown * (1 << doublings), maxHoldDown)
    }
}
