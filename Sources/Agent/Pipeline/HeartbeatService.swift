import Logging
import NetworkAddress
import OS
import ServiceLifecycle

/// One idle connection of the agent's own to each backend of each pool that watches for early
/// signals in the agent's namespace, kept by the kernel's keepalive (a probe after each second of
/// silence). Watches that only receive and idle connections never retransmit, so the passive
/// watch sees nothing when their backend dies; the heartbeat's keepalive probe does, and its
/// ETIMEDOUT is an early signal. One thread and one epoll for every heartbeat: a heartbeat only
/// wakes it when it ends.
public struct HeartbeatService: Service {
    let state: AgentState
    let executor: ReapExecutor
    let metrics: AgentMetrics
    let logger: Logger

    public init(state: AgentState, executor: ReapExecutor, metrics: AgentMetrics, logger: Logger) {
        self.state = state
        self.executor = executor
        self.metrics = metrics
        self.logger = logger
    }

    /// How long one wait lasts at most: how soon a stop or a reload is noticed.
    static let pollWait: Duration = .milliseconds(200)

    public func run() async throws {
        let state = state, executor = executor, metrics = metrics, logger = logger
        await ThreadLoop.run("heartbeats", logger: logger) { stopped throws(SystemCallError) in
            let wakeup: PollerWakeup, poller: EventPoller
            do {
                wakeup = try PollerWakeup()
                poller = try EventPoller(wakeup: wakeup)
            } catch {
                logger.warning("heartbeats off: no epoll for them", metadata: ["error": "\(error)"])
                return
            }
            defer { wakeup.close() }
            let table = HeartbeatTable(poller: poller, state: state, executor: executor, metrics: metrics, logger: logger)
            defer { table.closeAll() }
            var followed: UInt64?
            while !stopped() {
                if followed != state.configurationGeneration {
                    let (configuration, generation) = state.versionedConfiguration
                    table.follow(configuration)
                    followed = generation
                }
                let now = ContinuousClock.now
                table.connectDue(at: now)
                let wait = min(Self.pollWait, max(.zero, (table.nextRetry ?? now + Self.pollWait) - now))
                var ready: [UInt64] = []
                do { try poller.wait(milliseconds: Int32(wait.milliseconds)) { ready.append($0) } } catch {
                    logger.warning("heartbeats stopped: epoll failed", metadata: ["error": "\(error)"])
                    return
                }
                for token in ready { table.ready(token) }
            }
        }
    }
}

extension Duration {
    fileprivate var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
