import Foundation
import Health
import NetworkAddress
import Synchronization

/// What the agent knows now: configuration, the reap policy with every backend's state, each
/// backend's last reap, readiness and liveness. The single place /status, /readyz and the reap
/// pipeline read from. A mutex, not an actor: probe results arrive on event-loop threads and are
/// handled there without a hop; the policy is a value and never waits.
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

    struct Storage {
        var configuration: AgentConfiguration
        /// Counts the configurations taken: a loop that follows the configuration compares this,
        /// not the configuration (1,000 backends compared five times a second is work for nothing).
        var configurationGeneration: UInt64 = 0
        var policy: ReapPolicy
        var early: EarlyDetection
        var lastReaps: [BackendKey: ReapSummary] = [:]
        var lastHeartbeat = ContinuousClock.now
        var firstRoundDone = false

        var allProbedOnce: Bool { policy.backends.values.allSatisfy { $0.lastProbe != nil } }
    }

    private let storage: Mutex<Storage>
    /// Apart from `storage`: the heartbeats' thread writes it without touching the policy.
    private let heartbeats = Mutex<[BackendKey: HeartbeatRules.Phase]>([:])

    public init(configuration: AgentConfiguration) {
        storage = Mutex(
            Storage(
                configuration: configuration, policy: ReapPolicy(configuration),
                early: EarlyDetection(pools: Self.earlyPools(configuration))))
    }

    public var configuration: AgentConfiguration { storage.withLock { $0.configuration } }

    /// The configuration with its generation (one more at each `apply`).
    public var versionedConfiguration: (configuration: AgentConfiguration, generation: UInt64) {
        storage.withLock { ($0.configuration, $0.configurationGeneration) }
    }

    public var configurationGeneration: UInt64 { storage.withLock { $0.configurationGeneration } }

    /// Takes a new configuration; backends that stay keep their state, so a reload is not a flap.
    /// Returns what the policy leaves to undo (the new-flow watches of backends no longer reaped).
    @discardableResult
    public func apply(_ configuration: AgentConfiguration) -> [ReapPolicy.Action] {
        storage.withLock { storage in
            storage.configuration = configuration
            storage.configurationGeneration &+= 1
            let undo = storage.policy.apply(configuration)
            storage.early.apply(Self.earlyPools(configuration))
            let keys = Set(storage.policy.backends.keys)
            storage.lastReaps = storage.lastReaps.filter { keys.contains($0.key) }
            storage.firstRoundDone = storage.firstRoundDone && storage.allProbedOnce
            return undo
        }
    }

    /// Hands one event to the policy and returns what it decided.
    public func handle(_ event: ReapPolicy.Event) -> [ReapPolicy.Action] {
        storage.withLock { storage in
            let actions = storage.policy.handle(event)
            if case .probed = event {
                storage.lastHeartbeat = .now
                if !storage.firstRoundDone { storage.firstRoundDone = storage.allProbedOnce }
            }
            return actions
        }
    }

    /// Hands one event to early detection and returns the probes it wants.
    public func early(_ event: EarlyDetection.Event) -> [EarlyDetection.Action] {
        storage.withLock { $0.early.handle(event) }
    }

    /// How a backend's death was detected early, if it was: the signal and when it came.
    public func earlyDetection(of key: BackendKey) -> (signal: EarlyDetection.Signal, since: ContinuousClock.Instant)? {
        storage.withLock { $0.early.detections[key] }
    }

    static func earlyPools(_ configuration: AgentConfiguration) -> [EarlyDetection.PoolRules] {
        configuration.pools.filter(\.watchesRetransmissions).map(EarlyDetection.PoolRules.init)
    }

    /// The earliest instant the policy or early detection has something scheduled.
    public var nextDeadline: ContinuousClock.Instant? {
        storage.withLock { storage in [storage.policy.nextDeadline, storage.early.nextDeadline].compactMap { $0 }.min() }
    }

    public func stillEnds(_ key: BackendKey, episode: ReapEpisode) -> Bool {
        storage.withLock { $0.policy.stillEnds(key, episode: episode) }
    }

    public func stillRuns(_ key: BackendKey, reason: ReapReason, episode: ReapEpisode) -> Bool {
        storage.withLock { $0.policy.stillRuns(key, reason: reason, episode: episode) }
    }

    public func stillScans(pool: String) -> Bool {
        storage.withLock { $0.policy.stillScans(pool: pool) }
    }

    public func state(of key: BackendKey) -> BackendState {
        storage.withLock { $0.policy.backends[key]?.state ?? .unknown }
    }

    public func recordReap(_ summary: ReapSummary, for key: BackendKey) {
        storage.withLock { $0.lastReaps[key] = summary }
    }

    /// Probe loops report at least once per interval; three missed intervals mean they are stuck.
    public func loopsAlive() -> Bool {
        storage.withLock { storage in
            let longest = storage.configuration.pools.map { $0.interval + $0.probe.timeout }.max() ?? .seconds(1)
            return ContinuousClock.now - storage.lastHeartbeat < longest * 3 + .seconds(1)
        }
    }

    public func ready() -> Bool { storage.withLock { $0.firstRoundDone } }

    /// A backend's heartbeat now; nil: it has none.
    public func recordHeartbeat(_ phase: HeartbeatRules.Phase?, for key: BackendKey) {
        heartbeats.withLock { $0[key] = phase }
    }

    public func status() -> StatusDocument {
        let heartbeats = heartbeats.withLock { $0 }
        return storage.withLock { storage in
            let now = ContinuousClock.now, wallNow = Date()
            func date(_ instant: ContinuousClock.Instant?) -> Date? {
                instant.map { wallNow.addingTimeInterval(-(now - $0).seconds) }
            }
            return StatusDocument(
                ready: storage.firstRoundDone,
                dryRun: storage.configuration.dryRun,
                pools: storage.configuration.pools.map { pool in
                    StatusDocument.Pool(
                        name: pool.name,
                        guardHolding: storage.policy.guarded.contains(pool.name),
                        reapOn: pool.reapOn.rawValue,
                        backends: pool.backends.map { backend in
                            let key = BackendKey(pool: pool.name, backend: backend)
                            let record = storage.policy.backends[key]
                            return StatusDocument.Backend(
                                address: backend.description, state: record?.state ?? .unknown,
                                stateSince: date(record?.stateSince), lastFailure: record?.lastFailure,
                                lastFailureDetail: record?.lastFailureDetail, lastProbe: record?.lastProbe?.detail,
                                lastProbeSeconds: record?.lastProbe?.duration.seconds, lastProbeTime: date(record?.lastProbeAt),
                                lastReap: storage.lastReaps[key], lastChange: date(record?.stateSince),
                                heartbeat: heartbeats[key]?.description)
                        })
                })
        }
    }
}

/// The JSON of /status.
public struct StatusDocument: Sendable, Codable {
    public struct Backend: Sendable, Codable {
        public var address: String
        public var state: BackendState
        public var stateSince: Date?
        public var lastFailure: ProbeFailure?
        public var lastFailureDetail: String?
        public var lastProbe: String?
        public var lastProbeSeconds: Double?
        public var lastProbeTime: Date?
        public var lastReap: AgentState.ReapSummary?
        /// The same as `state_since`, under the name the first version used.
        public var lastChange: Date?
        /// The agent's own keepalive connection: connecting, up, retrying after a cause; absent: none.
        public var heartbeat: String?

        enum CodingKeys: String, CodingKey {
            case address, state
            case lastChange = "last_change"
            case stateSince = "state_since", lastFailure = "last_failure", lastFailureDetail = "last_failure_detail"
            case lastProbe = "last_probe", lastProbeSeconds = "last_probe_seconds"
            case lastProbeTime = "last_probe_time", lastReap = "last_reap", heartbeat
        }
    }

    public struct Pool: Sendable, Codable {
        public var name: String
        public var guardHolding: Bool
        public var reapOn: String
        public var backends: [Backend]

        enum CodingKeys: String, CodingKey {
            case name, backends
            case guardHolding = "all_down_guard", reapOn = "reap_on"
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
