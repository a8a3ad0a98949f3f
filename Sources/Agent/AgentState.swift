import Foundation
import Synchronization
import Health
import NetworkAddress

/// What the agent knows now: configuration, each backend's health and last reap, readiness and
/// liveness. The single place /status, /readyz and the reap guard read from. A mutex, not an actor:
/// probe results arrive on event-loop threads and are recorded there without a hop.
public final class AgentState: Sendable {
    public struct ReapSummary: Sendable, Codable, Equatable {
        public var time: Date
        public var reason: String
        public var sockets: Int
        public var conntrackEntries: Int
        public var errors: Int
        public var dryRun: Bool

        enum CodingKeys: String, CodingKey {
            case time, reason, sockets, errors
            case conntrackEntries = "conntrack_entries", dryRun = "dry_run"
        }
    }

    struct BackendRecord {
        var health: BackendHealth
        /// When the current run of failed probes began; nil while the last probe succeeded.
        var failingSince: ContinuousClock.Instant?
        var lastSuccess: ContinuousClock.Instant?
        var lastChange: Date?
        var lastProbe: ProbeResult?
        var lastProbeTime: Date?
        var lastReap: ReapSummary?
    }

    struct Storage {
        var configuration: AgentConfiguration
        var backends: [String: [Endpoint: BackendRecord]]
        var lastHeartbeat = ContinuousClock.now
        var firstRoundDone = false
        /// Pools whose "every backend is down" guard is holding; logged once on entry, not every reap.
        var guardedPools: Set<String> = []

        var allProbedOnce: Bool { backends.values.allSatisfy { $0.values.allSatisfy { $0.lastProbe != nil } } }
    }

    private let storage: Mutex<Storage>

    public init(configuration: AgentConfiguration) {
        storage = Mutex(Storage(configuration: configuration, backends: Self.records(for: configuration, keeping: [:])))
    }

    public var configuration: AgentConfiguration { storage.withLock { $0.configuration } }

    /// Takes a new configuration; backends that stay keep their health, so a reload is not a flap.
    public func apply(_ configuration: AgentConfiguration) {
        storage.withLock { storage in
            storage.configuration = configuration
            storage.backends = Self.records(for: configuration, keeping: storage.backends)
            storage.firstRoundDone = storage.firstRoundDone && storage.allProbedOnce
        }
    }

    static func records(
        for configuration: AgentConfiguration, keeping backends: [String: [Endpoint: BackendRecord]]
    ) -> [String: [Endpoint: BackendRecord]] {
        var next: [String: [Endpoint: BackendRecord]] = [:]
        for pool in configuration.pools {
            var records: [Endpoint: BackendRecord] = [:]
            for backend in pool.backends {
                if let old = backends[pool.name]?[backend], old.health.rise == pool.rise, old.health.fall == pool.fall {
                    records[backend] = old
                } else {
                    records[backend] = BackendRecord(health: BackendHealth(rise: pool.rise, fall: pool.fall))
                }
            }
            next[pool.name] = records
        }
        return next
    }

    /// Records a probe; returns the backend's state and, when it changed, the new state.
    public func record(_ result: ProbeResult, pool: String, backend: Endpoint) -> (state: BackendHealth.State, changed: BackendHealth.State?) {
        storage.withLock { storage in
            guard var record = storage.backends[pool]?[backend] else { return (.unknown, nil) }
            let changed = record.health.record(success: result.success)
            let instant = ContinuousClock.now
            if result.success {
                record.lastSuccess = instant
                record.failingSince = nil
            } else if record.failingSince == nil {
                record.failingSince = instant - result.duration  // the probe began failing when it was sent
            }
            let now = Date()
            if changed != nil { record.lastChange = now }
            record.lastProbe = result
            record.lastProbeTime = now
            storage.backends[pool]?[backend] = record
            storage.lastHeartbeat = .now
            if !storage.firstRoundDone { storage.firstRoundDone = storage.allProbedOnce }
            return (record.health.state, changed)
        }
    }

    public func state(pool: String, backend: Endpoint) -> BackendHealth.State {
        storage.withLock { $0.backends[pool]?[backend]?.health.state ?? .unknown }
    }

    /// Still counted down, but its last probe succeeded: it is coming back (rise not reached yet).
    /// Its new connections are likely good ones; reaping them would reset a recovering backend.
    public func isRecovering(pool: String, backend: Endpoint) -> Bool {
        storage.withLock { storage in
            guard let record = storage.backends[pool]?[backend] else { return false }
            return record.health.state == .down && record.failingSince == nil && record.lastProbe?.success == true
        }
    }

    /// Another backend of the pool that answered a probe after `backend` began failing: evidence
    /// that the fault is the backend's, not the prober's or the network's, and that clients have
    /// somewhere to go. Without one, reaping could reset an overloaded sole survivor (incident 2).
    public func survivor(pool: String, besides backend: Endpoint) -> Endpoint? {
        storage.withLock { storage in
            guard let records = storage.backends[pool] else { return nil }
            let since = records[backend]?.failingSince ?? ContinuousClock.now
            return records.first { $0.key != backend && ($0.value.lastSuccess.map { $0 > since } ?? false) }?.key
        }
    }

    public func allDown(pool: String) -> Bool {
        storage.withLock { storage in
            guard let records = storage.backends[pool], !records.isEmpty else { return false }
            return records.values.allSatisfy { $0.health.state == .down }
        }
    }

    /// True the first time a pool's guard holds since it last released; the caller logs loudly then.
    public func enterGuard(pool: String) -> Bool { storage.withLock { $0.guardedPools.insert(pool).inserted } }

    public func leaveGuard(pool: String) -> Bool { storage.withLock { $0.guardedPools.remove(pool) != nil } }

    public func recordReap(_ summary: ReapSummary, pool: String, backend: Endpoint) {
        storage.withLock { $0.backends[pool]?[backend]?.lastReap = summary }
    }

    /// Probe loops report at least once per interval; three missed intervals mean they are stuck.
    public func loopsAlive() -> Bool {
        storage.withLock { storage in
            let longest = storage.configuration.pools.map { $0.interval + $0.probe.timeout }.max() ?? .seconds(1)
            return ContinuousClock.now - storage.lastHeartbeat < longest * 3 + .seconds(1)
        }
    }

    public func ready() -> Bool { storage.withLock { $0.firstRoundDone } }

    public func status() -> StatusDocument {
        storage.withLock { storage in
            StatusDocument(
                ready: storage.firstRoundDone,
                dryRun: storage.configuration.dryRun,
                pools: storage.configuration.pools.map { pool in
                    StatusDocument.Pool(
                        name: pool.name,
                        guardHolding: storage.guardedPools.contains(pool.name),
                        backends: pool.backends.map { backend in
                            let record = storage.backends[pool.name]?[backend]
                            return StatusDocument.Backend(
                                address: backend.description, state: record?.health.state ?? .unknown,
                                lastChange: record?.lastChange, lastProbe: record?.lastProbe?.detail,
                                lastProbeSeconds: record?.lastProbe?.duration.seconds, lastProbeTime: record?.lastProbeTime,
                                lastReap: record?.lastReap)
                        })
                })
        }
    }
}

/// The JSON of /status.
public struct StatusDocument: Sendable, Codable {
    public struct Backend: Sendable, Codable {
        public var address: String
        public var state: BackendHealth.State
        public var lastChange: Date?
        public var lastProbe: String?
        public var lastProbeSeconds: Double?
        public var lastProbeTime: Date?
        public var lastReap: AgentState.ReapSummary?

        enum CodingKeys: String, CodingKey {
            case address, state
            case lastChange = "last_change", lastProbe = "last_probe", lastProbeSeconds = "last_probe_seconds"
            case lastProbeTime = "last_probe_time", lastReap = "last_reap"
        }
    }

    public struct Pool: Sendable, Codable {
        public var name: String
        public var guardHolding: Bool
        public var backends: [Backend]

        enum CodingKeys: String, CodingKey {
            case name, backends
            case guardHolding = "all_down_guard"
        }
    }

    public var ready: Bool
    public var dryRun: Bool
    public var pools: [Pool]

    enum CodingKeys: String, CodingKey {
        case ready, pools
        case dryRun = "dry_run"
    }
}
