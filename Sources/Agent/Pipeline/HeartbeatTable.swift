import Logging
import NetworkAddress
import OS
import SystemPackage

/// The heartbeats of `HeartbeatService`, owned by its one thread: which connection is whose, what
/// each is waiting for, and what an end of one means.
final class HeartbeatTable {
    struct Heartbeat {
        var probeInterval: Duration
        var descriptor: Int32?
        var token: UInt64 = 0
        var establishedAt: ContinuousClock.Instant?
        var failures = 0
        var retryAt: ContinuousClock.Instant
    }

    private let poller: EventPoller
    private let state: AgentState
    private let executor: ReapExecutor
    private let metrics: AgentMetrics
    private let logger: Logger
    private var heartbeats: [BackendKey: Heartbeat] = [:]
    private var owners: [UInt64: BackendKey] = [:]
    private var lastToken: UInt64 = 0

    init(poller: EventPoller, state: AgentState, executor: ReapExecutor, metrics: AgentMetrics, logger: Logger) {
        self.poller = poller
        self.state = state
        self.executor = executor
        self.metrics = metrics
        self.logger = logger
    }

    var nextRetry: ContinuousClock.Instant? {
        heartbeats.values.filter { $0.descriptor == nil }.map(\.retryAt).min()
    }

    /// Starts heartbeats for backends the configuration added and ends those it dropped.
    func follow(_ configuration: AgentConfiguration) {
        var wanted: [BackendKey: Duration] = [:]
        for pool in configuration.heartbeatPools {
            for backend in pool.backends { wanted[BackendKey(pool: pool.name, backend: backend)] = pool.interval }
        }
        for key in heartbeats.keys where wanted[key] == nil {
            if let descriptor = heartbeats[key]?.descriptor { HeartbeatSocket.close(descriptor) }
            heartbeats[key] = nil
            metrics.forgetHeartbeatUp(pool: key.pool, backend: key.backend.description)
            state.recordHeartbeat(nil, for: key)
        }
        for (key, interval) in wanted {
            if heartbeats[key] == nil {
                heartbeats[key] = Heartbeat(probeInterval: interval, retryAt: .now)
            } else {
                heartbeats[key]?.probeInterval = interval
            }
        }
    }

    func connectDue(at now: ContinuousClock.Instant) {
        for (key, heartbeat) in heartbeats where heartbeat.descriptor == nil && heartbeat.retryAt <= now {
            lastToken += 1
            do throws(SystemCallError) {
                let descriptor = try HeartbeatSocket.connect(to: key.backend, options: HeartbeatRules.options)
                do { try poller.watchWritable(descriptor, token: lastToken) } catch {
                    HeartbeatSocket.close(descriptor)
                    throw error
                }
                heartbeats[key]?.descriptor = descriptor
                heartbeats[key]?.token = lastToken
                owners[lastToken] = key
                state.recordHeartbeat(.connecting, for: key)
            } catch {
                ended(key, errno: error.errno, detail: "\(error)")
            }
        }
    }

    /// A heartbeat's descriptor is ready: its connect ended, or the established connection did.
    func ready(_ token: UInt64) {
        guard let key = owners[token], let heartbeat = heartbeats[key], let descriptor = heartbeat.descriptor else { return }
        if let error = TCPSocket.pendingError(descriptor) {
            // SO_ERROR names it a connect's; once established it is the connection's own.
            ended(key, errno: error.errno, detail: heartbeat.establishedAt == nil ? "\(error)" : error.errno.symbolicName)
            return
        }
        if heartbeat.establishedAt == nil {
            heartbeats[key]?.establishedAt = .now
            metrics.heartbeatUp(pool: key.pool, backend: key.backend.description).set(to: 1)
            state.recordHeartbeat(.up, for: key)
        } else {
            switch HeartbeatSocket.drain(descriptor) {
            case .data, .nothing: break
            case .closed:
                ended(key, errno: nil, detail: "the backend closed it")
                return
            case .failed(let error):
                ended(key, errno: error.errno, detail: "\(error)")
                return
            }
        }
        do { try poller.watchReadable(descriptor, token: token) } catch {
            ended(key, errno: error.errno, detail: "\(error)")
        }
    }

    func closeAll() {
        for heartbeat in heartbeats.values { heartbeat.descriptor.map(HeartbeatSocket.close) }
        heartbeats = [:]
    }

    /// The heartbeat ended: count it, signal a timeout of an established one, and make it again later.
    private func ended(_ key: BackendKey, errno: Errno?, detail: String) {
        guard var heartbeat = heartbeats[key] else { return }
        let now = ContinuousClock.now
        let cause = HeartbeatRules.cause(of: errno)
        let lived = heartbeat.establishedAt.map { now - $0 }
        if let descriptor = heartbeat.descriptor { HeartbeatSocket.close(descriptor) }
        owners[heartbeat.token] = nil
        heartbeat.failures = lived.map { $0 >= HeartbeatRules.stableAfter } == true ? 1 : heartbeat.failures + 1
        heartbeat.descriptor = nil
        heartbeat.establishedAt = nil
        heartbeat.retryAt = now + HeartbeatRules.backoff(afterFailures: heartbeat.failures, probeInterval: heartbeat.probeInterval)
        heartbeats[key] = heartbeat
        let backend = key.backend.description
        metrics.heartbeatUp(pool: key.pool, backend: backend).set(to: 0)
        metrics.heartbeatFailures(pool: key.pool, backend: backend, cause: cause).increment()
        state.recordHeartbeat(.retrying(after: cause), for: key)
        let metadata: Logger.Metadata = [
            "pool": "\(key.pool)", "backend": "\(backend)", "cause": "\(cause.rawValue)", "detail": "\(detail)",
            "established_for": "\(lived.map { "\($0)" } ?? "never")",
        ]
        if HeartbeatRules.isSignal(cause, established: lived != nil), let lived {
            logger.warning("heartbeat timed out", metadata: metadata)
            executor.earlySignal(
                key, .heartbeat,
                detail: "its heartbeat connection (up \(lived.components.seconds) s) went unacknowledged past a keepalive probe: \(detail)")
        } else {
            logger.debug("heartbeat ended, made again later", metadata: metadata)
        }
    }
}
