import Health
import NetworkAddress
import Conntrack

/// What the agent believes of a backend, from evidence: probe results and its own connections.
public enum BackendState: String, Sendable, Codable, CaseIterable {
    /// Not probed `rise` or `fall` times yet.
    case unknown
    case up
    /// Probes fail, but something still answers: the probe reached the process (a 503 while
    /// draining, a slow /readyz under load, TLS trouble), or its connections still receive
    /// segments. Its connections are left alone until `drain_timeout`.
    case unhealthy
    /// Nothing answers on the port (refused or unreachable) and its connections have received
    /// nothing since its probes began failing. Reaped at once and kept reaped.
    case dead
}

/// Which state ends a backend's connections (pool option `reap_on`).
public enum ReapOn: String, Sendable, CaseIterable {
    /// Only a dead backend's connections are ended at once; an unhealthy one's after `drain_timeout`.
    case dead
    /// Any `fall` failed probes end its connections, as before backend states existed.
    case unhealthy
}

/// Why connections were ended: the `reason` of every audit line.
public enum ReapReason: String, Sendable, Codable, CaseIterable {
    /// The backend was found dead: its first reap.
    case dead
    /// Later passes while it stays dead: new connects (SYN_SENT) and anything that slipped in.
    case stillDead = "still-dead"
    /// It stayed unhealthy past `drain_timeout`: its connections are closed, paced.
    case drainTimeout = "drain_timeout"
    /// `reap_on: unhealthy`: failed probes alone.
    case unhealthy
    /// The stuck detector condemned single connections.
    case stuck
    /// A quiet connection on an over-share backend, ended so it reconnects to the emptiest one.
    case rebalance
}

/// One stretch of a backend's connections being ended: from a dead verdict (or a drain's start) to
/// the answer, removal or recovery that ends it. A backend that answered and then fell silent again
/// starts a new one. Every action that ends connections carries the episode it was decided in, and
/// runs only while that episode lasts: a pass decided before an answer never runs after it, even
/// when a new verdict follows (the new episode decides its own passes, on its own evidence).
public struct ReapEpisode: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let number: UInt64

    public init(_ number: UInt64) { self.number = number }

    public var description: String { "\(number)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.number < rhs.number }
}

/// Why a reap that a probe verdict would have asked for was held back.
public enum SuppressReason: String, Sendable, CaseIterable {
    /// Probes fail, but the probe reached the process: draining or overloaded, not dead.
    case unhealthyNotDead = "unhealthy_not_dead"
    /// Probes find nothing answering, yet its connections still receive segments.
    case aliveEvidence = "alive_evidence"
    /// Every backend of the pool looks down: the prober or the network is the likely fault.
    case allBackendsDown = "all_backends_down"
    /// The reconnect-storm budget is spent for now.
    case budget
    /// The local conntrack table is full: the kernel drops new flows here, so a probe that found
    /// nothing answering says nothing about the backend.
    case conntrackFull = "conntrack_table_full"
    /// The probe failed on this host (EADDRNOTAVAIL, EMFILE, ENOBUFS, EPERM): it says nothing of the backend.
    case proberFault = "prober_fault"
    /// Nothing answers probes, but the look at its connections failed or was cut short: missing
    /// evidence of life is no evidence of death.
    case evidenceMissing = "evidence_missing"
    /// The backend is in another pool too, which does not find it dead (or has no survivor).
    case sharedBackend = "shared_backend"
    /// Nothing answers, but for less than `min_outage` since its last sign of life: it may only have paused.
    case shortOutage = "short_outage"
    /// Every backend of the pool has a stuck connection at once: the fault is local, nothing is ended.
    case localFault = "local_fault"
}

/// Which of a backend's sockets a reap pass looks at.
public enum ReapScope: String, Sendable {
    /// Established and connecting sockets and their conntrack entries, NAT'd flows included.
    case full
    /// Only connects in progress (SYN_SENT): all a dead backend can gain after its first reap,
    /// and the cheap walk (the kernel checks the state mask before any filter program).
    case newConnects
    /// Established connections only, without conntrack: a paced close of a live backend's.
    case established
}

/// What a dump of a backend's own established sockets says about its data path.
public struct SegmentEvidence: Sendable, Equatable {
    /// When the dump ran.
    public var at: ContinuousClock.Instant
    /// Established sockets toward the backend (the agent's own probe sockets left out).
    public var sockets: Int
    /// Age of the newest segment (an ACK or data) any of them received; nil when none has a
    /// reading (no sockets, or no tcp_info).
    public var youngestSegmentAge: Duration?

    /// Every namespace was read and every dump ran to its end: the absence of a segment means something.
    public var complete: Bool
    /// What could not be read, for the log: a namespace and its error.
    public var unreadable: [String]

    public init(
        at: ContinuousClock.Instant, sockets: Int, youngestSegmentAge: Duration?, complete: Bool = true, unreadable: [String] = []
    ) {
        self.at = at
        self.sockets = sockets
        self.youngestSegmentAge = youngestSegmentAge
        self.complete = complete && unreadable.isEmpty
        self.unreadable = unreadable
    }

    /// When the newest segment arrived, if any socket had one.
    public var lastSegment: ContinuousClock.Instant? { youngestSegmentAge.map { at - $0 } }

    /// A segment came after `instant`, or within `recentEnough` of the dump: the peer's stack answered.
    /// The second half matters when the window is short: early probes decide within a fraction of a
    /// second, and a path silent for less than a probe interval (a switch port flapping, a burst of
    /// loss) must not make a live backend dead sooner than probing alone would.
    public func showsLife(after instant: ContinuousClock.Instant, recentEnough: Duration = .zero) -> Bool {
        guard let age = youngestSegmentAge else { return false }
        return at - age > instant || age < recentEnough
    }

    /// The longest silence a probe interval asks for, whatever the interval.
    public static let recentEnoughCap: Duration = .milliseconds(500)
}

/// One key for a backend of a pool.
public struct BackendKey: Hashable, Sendable, CustomStringConvertible {
    public var pool: String
    public var backend: Endpoint

    public init(pool: String, backend: Endpoint) {
        self.pool = pool
        self.backend = backend
    }

    public var description: String { "\(pool)/\(backend)" }
}

/// A new flow conntrack announced, in the namespace it was announced in (nil: the agent's own).
public struct AnnouncedFlow: Sendable, Hashable {
    public var entry: ConntrackEntry
    public var namespace: String?

    public init(entry: ConntrackEntry, namespace: String?) {
        self.entry = entry
        self.namespace = namespace
    }
}
