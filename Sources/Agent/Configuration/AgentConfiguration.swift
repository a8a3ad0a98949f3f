import Conntrack
import Health
import Logging
import NetworkAddress

/// Everything the agent runs with, whichever source it came from (YAML, flags, nginx.conf).
public struct AgentConfiguration: Sendable, Equatable {
    public var listen = Endpoint(address: .v4(0x7F00_0001), port: 9747)
    public var logFormat: LogFormat = .logfmt
    /// The least severe level logged (`log_level`: trace ... critical); a reload applies a new one.
    public var logLevel: Logger.Level = .info
    public var dryRun = false
    /// The reconnect-storm budget, node-wide across pools and rules: sockets ended per second on
    /// average, and at most this many at once (a dead backend's whole set goes in one burst).
    public var maxSocketsPerSecond = 500
    public var maxSocketsBurst = 5_000
    /// When every backend of a pool looks down the probe side is the likely fault (incident 2):
    /// reap nothing unless this is set.
    public var reapWhenAllDown = false
    public var pools: [PoolConfiguration] = []
    /// Network namespaces every pool works in unless it names its own; nil: the agent's own.
    public var netns: NamespaceSelection?

    public init() {}

    /// Whether some pool works in other namespaces (entering them needs CAP_SYS_ADMIN).
    public var usesOtherNamespaces: Bool {
        netns != nil || pools.contains { $0.netns != nil }
    }

    /// Whether namespaces are found through /proc/PID/ns/net (`all`, or such a path): opening
    /// another process's needs CAP_SYS_PTRACE when that process holds capabilities the agent lacks.
    public var inspectsProcesses: Bool {
        ([netns] + pools.map(\.netns)).contains { selection in
            switch selection {
            case .all?: true
            case .paths(let paths)?: paths.contains { $0.hasPrefix("/proc/") }
            case nil: false
            }
        }
    }

    /// Where a pool's sockets and conntrack entries are looked for.
    public func namespaces(of pool: PoolConfiguration) -> NamespaceSelection? {
        pool.netns ?? netns
    }

    public enum LogFormat: String, Sendable, CaseIterable {
        case logfmt, json
    }
}

public struct PoolConfiguration: Sendable, Equatable {
    public var name: String
    public var backends: [Endpoint]
    public var protocols: Set<TransportProtocol> = [.tcp]
    /// 0: the stuck-connection detector is off.
    public var stuckAfter: Duration = .zero
    public var probe = ProbeSpec()
    public var interval: Duration = .seconds(1)
    public var rise = 2
    public var fall = 2
    /// Which state ends connections: `dead` (default) or any failed probes (`unhealthy`).
    public var reapOn: ReapOn = .dead
    /// How long an unhealthy backend keeps its connections before they are closed, paced; 0: forever.
    public var drainTimeout: Duration = .seconds(120)
    /// nil: the top-level `netns`, else the agent's own namespace.
    public var netns: NamespaceSelection?
    /// Probe a backend at once when its connections retransmit while the pool's others are
    /// acknowledged (`early_detection`, TCP pools; on by default).
    public var earlyDetection = true
    /// Hold one idle connection of the agent's own to each backend, probed by the kernel's
    /// keepalive every second, whose timeout is an early signal (`heartbeat`, where early detection
    /// watches, in the agent's own namespace). Off unless asked: a server closes the silent
    /// connection after its idle timeout (30-90 s), and a TLS server logs each one as a failed
    /// handshake, which across a fleet is noise on the apiserver an operator should choose.
    public var heartbeat = false
    /// Move a fair share of long-lived connections back to a backend that returns, paced.
    public var rebalance = false
    /// No rebalancing while every backend holds within this many percent of its fair share.
    public var rebalanceTolerance: Double = 20
    /// Closes per second on this node while rebalancing; nil: 1% of the pool's connections (1.5 to 5).
    public var rebalanceRate: Double?
    /// Whose connections a rebalance counts and moves (`rebalance_owner`): by default the balancer's.
    public var rebalanceOwner: RebalanceOwner = .auto
    /// The longest silence a live backend may have without a connection of it ended (`min_outage`):
    /// a bond or switch failover, a VM paused for live migration, which TCP recovers by itself. A
    /// dead verdict needs at least this much silence since the backend's last sign of life, or
    /// `(fall - 1) x interval` when that is shorter (probing alone never waits longer than it did).
    public var minOutage: Duration = .seconds(1)
    /// The conntrack zones whose entries a reap takes (`conntrack_zones`): zone 0 unless it names others.
    public var conntrackZones: ConntrackZones = .standard

    public init(name: String, backends: [Endpoint]) {
        self.name = name
        self.backends = backends
    }

    /// TCP connections carry ACKs that tell a live peer from a dead one; a UDP-only pool has none,
    /// so its states come from the probes' failure classes alone.
    public var hasSegmentEvidence: Bool { protocols.contains(.tcp) }

    /// The silence a dead verdict needs (see `minOutage`).
    public var outageFloor: Duration { min(minOutage, interval * max(0, fall - 1)) }

    /// Whether the passive watch looks at this pool's connections (it reads TCP retransmissions).
    public var watchesRetransmissions: Bool { earlyDetection && protocols.contains(.tcp) }
}

extension AgentConfiguration {
    /// The pools whose backends get a heartbeat connection: those that watch for early signals,
    /// whatever namespace their connections are in. Like the probes, a heartbeat is made from the
    /// agent's own namespace: it asks whether the backend's kernel answers, not how a namespace routes.
    public var heartbeatPools: [PoolConfiguration] {
        pools.filter { $0.heartbeat && $0.watchesRetransmissions }
    }
}

/// Network namespaces to work in: files naming them, or every one on the node (re-enumerated).
public enum NamespaceSelection: Sendable, Equatable {
    case paths([String])
    case all
}
