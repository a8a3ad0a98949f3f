import Durations
import Health
import Logging
import NIOCore
import NIOPosix
import NetworkAddress
import ServiceLifecycle
import Synchronization

/// Carries out what `ReapPolicy` decides, one action at a time, and feeds the results back as
/// events. Probe results come in through `submit` from the probe loops' event loops; the clock
/// comes from an alarm on an event loop set for the policy's next deadline, so an agent with
/// nothing scheduled never wakes for the policy's sake.
public final class ReapExecutor: Service, Sendable {
    private let state: AgentState
    private let kernel: any ReapKernel
    private let accounting: ReapAccounting
    private let actions: AsyncStream<ReapPolicy.Action>
    private let continuation: AsyncStream<ReapPolicy.Action>.Continuation
    /// Probes some of a pool's backends now, with a timeout of their own if given.
    public typealias PoolProber = @Sendable (_ backends: [Endpoint], _ timeout: Duration?) async -> Void
    /// Per pool: probe these of its backends now (set by each probe generation).
    private let probers = Mutex<[String: PoolProber]>([:])
    /// Early detection's probes, run beside the policy's actions.
    private let earlyProbes: AsyncStream<(BackendKey, Duration)>
    private let earlyProbesContinuation: AsyncStream<(BackendKey, Duration)>.Continuation
    /// How often the passive watch looks at each early-detection pool's connections.
    let watchCadence: Duration
    private let alarmLoop: any EventLoop
    /// The one alarm set, and the deadline it is for.
    private let alarm = Mutex<(task: Scheduled<Void>, due: ContinuousClock.Instant)?>(nil)

    public init(
        state: AgentState, kernel: any ReapKernel, metrics: AgentMetrics, logger: Logger,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, watchCadence: Duration = ReapExecutor.defaultWatchCadence
    ) {
        self.state = state
        self.kernel = kernel
        self.accounting = ReapAccounting(state: state, metrics: metrics, logger: logger)
        self.alarmLoop = group.next()
        self.watchCadence = watchCadence
        (actions, continuation) = AsyncStream.makeStream(of: ReapPolicy.Action.self)
        (earlyProbes, earlyProbesContinuation) = AsyncStream.makeStream(of: (BackendKey, Duration).self)
    }

    /// A retransmission shows about one RTO (at least 200 ms) after the data went unacknowledged;
    /// looking every 50 ms while data is out adds at most that much, and `WatchCadence` looks less
    /// often while none is. What it costs is measured in `make bench`.
    public static let defaultWatchCadence: Duration = .milliseconds(50)

    /// Hands an event to the policy. What only tells (a state change, a held-back reap) is logged
    /// and counted at once, so the log and metrics agree with /status; the rest is queued for `run`.
    public func submit(_ event: ReapPolicy.Event) {
        let decided = state.handle(event)
        for action in decided {
            switch action {
            case .changed, .suppressed, .guardReleased, .rebalanceNews: tell(action)
            default: continuation.yield(action)
            }
        }
        for event in Self.earlyEvents(after: event, decided: decided, at: .now) { perform(early: state.early(event)) }
        setAlarm()
    }

    /// Early detection hears the same probe results and state changes, and the same clock: what it
    /// is told after the policy handled `event` (the simulator routes events through this too).
    public static func earlyEvents(
        after event: ReapPolicy.Event, decided: [ReapPolicy.Action], at now: ContinuousClock.Instant
    ) -> [EarlyDetection.Event] {
        var early: [EarlyDetection.Event] = []
        switch event {
        case .probed(let key, let result, let at): early.append(.probed(key, success: result.success, at: at))
        case .tick(let now): early.append(.tick(now))
        default: break
        }
        for case .changed(let key, _, let to, _, _) in decided { early.append(.state(key, to, at: now)) }
        return early
    }

    /// A signal about one backend alone (its neighbour entry, its interface's carrier).
    func earlySignal(_ key: BackendKey, _ signal: EarlyDetection.Signal, detail: String) {
        perform(early: state.early(.signal(key, signal, detail: detail, at: .now)))
        setAlarm()
    }

    /// What the passive watch saw of a pool's connections.
    func observed(_ observation: EarlyDetection.Observation) {
        perform(early: state.early(.observed(observation)))
        setAlarm()
    }

    private func perform(early actions: [EarlyDetection.Action]) {
        for action in actions {
            switch action {
            case .probe(let key, let timeout, let signal):
                accounting.earlyProbe(key, signal: signal)
                earlyProbesContinuation.yield((key, timeout))
            case .suspected(let key, let signal, let detail):
                accounting.suspected(key, signal: signal, detail: detail)
            case .cleared(let key, let signal, let verdict, let after):
                accounting.cleared(key, signal: signal, verdict: verdict, after: after)
            case .probeForReturn(let key, let timeout):
                accounting.returnProbe(key)
                earlyProbesContinuation.yield((key, timeout))
            case .answeredAgain(let key, let signal, let after):
                accounting.answeredAgain(key, signal: signal, after: after)
            }
        }
    }

    /// One look per pool that watches retransmissions (in its namespaces), every `watchCadence` while
    /// a sentinel has data out, less often while none has (`WatchCadence`).
    private func watchRetransmissions() async {
        while !Task.isCancelled {
            let configuration = state.configuration
            var wait: Duration?
            for pool in configuration.pools where pool.watchesRetransmissions && pool.backends.count > 1 {
                // Every namespace on the node, 20 times a second, would cost more than it saves.
                let namespaces = configuration.namespaces(of: pool)
                if case .all? = namespaces { continue }
                let count = await kernel.retransmissions(of: pool, namespaces: namespaces)
                observed(.init(pool: pool.name, connections: count.connections, retransmitting: count.retransmitting, at: .now))
                let next = WatchCadence.next(
                    armed: count.armed, shortestRTO: count.shortestRTO, watching: !count.connections.isEmpty, fast: watchCadence)
                wait = min(wait ?? next, next)
            }
            // With nothing to watch, look again for a reload's pools once a second.
            try? await Task.sleep(for: wait ?? .seconds(1))
        }
    }

    private func tell(_ action: ReapPolicy.Action) {
        switch action {
        case .changed(let key, let from, let to, let failure, let detail):
            accounting.changed(key, from: from, to: to, failure: failure, detail: detail)
        case .suppressed(let pool, let backend, let reason, let log):
            accounting.suppressed(pool: pool, backend: backend, reason: reason, log: log)
        case .guardReleased(let pool):
            accounting.logger.notice("a backend of the pool answers again: reaping resumes", metadata: ["pool": "\(pool)"])
        case .rebalanceNews(let pool, let news):
            accounting.rebalanceNews(pool: pool, news)
        default:
            break
        }
    }

    /// Sets the alarm for the policy's next deadline, unless one is set for it or earlier.
    private func setAlarm() {
        guard let due = state.nextDeadline else { return }
        alarm.withLock { current in
            if let current, current.due <= due { return }
            current?.task.cancel()
            let delay = max(.zero, due - .now)
            let task = alarmLoop.scheduleTask(in: .nanoseconds(Int64(delay.seconds * 1e9))) { [self] in
                alarm.withLock { $0 = nil }
                submit(.tick(.now))
            }
            current = (task, due)
        }
    }

    public func setProbers(_ probers: [String: PoolProber]) {
        self.probers.withLock { $0 = probers }
    }

    /// Takes a reloaded configuration: what it leaves to undo (a removed backend's new-flow watch)
    /// is queued like any other action, and every backend's state is published again.
    public func apply(_ configuration: AgentConfiguration) {
        for action in state.apply(configuration) { continuation.yield(action) }
        publishStates()
    }

    /// Publishes every backend's state gauges, so a backend not probed yet reads `unknown`.
    public func publishStates() {
        for pool in state.configuration.pools {
            for backend in pool.backends {
                let key = BackendKey(pool: pool.name, backend: backend)
                accounting.publish(key, state: state.state(of: key))
            }
        }
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                self.setAlarm()
                group.addTask { await self.watchRetransmissions() }
                group.addTask {
                    // Side by side: early probes are spaced to overlap, never queued behind each other.
                    await withDiscardingTaskGroup { probes in
                        for await (key, timeout) in self.earlyProbes {
                            guard let probe = self.probers.withLock({ $0[key.pool] }) else { continue }
                            probes.addTask { await probe([key.backend], timeout) }
                        }
                    }
                }
                // One lane per backend (and per pool for stuck scans): a backend's actions stay in
                // order, while one backend's passes never wait behind another's.
                var lanes: [Lane: AsyncStream<ReapPolicy.Action>.Continuation] = [:]
                for await action in self.actions {
                    if case .probeNow(let pool, let backends) = action {
                        // Probes take up to their timeout: never in the way of a reap.
                        if let probe = self.probers.withLock({ $0[pool] }) { group.addTask { await probe(backends, nil) } }
                        continue
                    }
                    let lane = Lane(action)
                    if lanes[lane] == nil {
                        let (queue, continuation) = AsyncStream.makeStream(of: ReapPolicy.Action.self)
                        lanes[lane] = continuation
                        // Ahead of the status endpoint's handlers in the task pool: a scrape storm must not delay a reap.
                        group.addTask(priority: .high) { for await queued in queue { await self.perform(queued) } }
                    }
                    lanes[lane]?.yield(action)
                }
                for continuation in lanes.values { continuation.finish() }
                self.earlyProbesContinuation.finish()
                group.cancelAll()
            }
        }
        alarm.withLock {
            $0?.task.cancel(); $0 = nil
        }
    }

    /// Where an action waits its turn.
    enum Lane: Hashable {
        case backend(BackendKey)
        case pool(String)

        init(_ action: ReapPolicy.Action) {
            switch action {
            case .needEvidence(let key, _), .reap(let key, _, _, _, _), .countConnections(let key), .watchNewFlows(let key),
                .unwatchNewFlows(let key), .endFlow(let key, _, _, _), .changed(let key, _, _, _, _), .rebalance(let key, _):
                self = .backend(key)
            case .scanStuck(let pool, _), .probeNow(let pool, _), .suppressed(let pool, _, _, _), .guardReleased(let pool),
                .census(let pool), .rebalanceNews(let pool, _):
                self = .pool(pool)
            }
        }
    }

    func perform(_ action: ReapPolicy.Action) async {
        let configuration = state.configuration
        switch action {
        case .changed, .suppressed, .guardReleased, .rebalanceNews:
            tell(action)
        case .probeNow:
            break  // started by `run`
        case .needEvidence(let key, let since):
            guard let pool = configuration.pools.first(where: { $0.name == key.pool }) else { return }
            let evidence = await kernel.evidence(
                toward: key.backend, transports: pool.protocols, namespaces: configuration.namespaces(of: pool))
            accounting.evidence(key, evidence, since: since)
            // Probes fail fast; the table watch looks four times a second: a dead verdict asks now.
            if configuration.namespaces(of: pool) == nil, await ConntrackTableWatch.isFullNow() { submit(.conntrackTable(full: true)) }
            submit(.evidence(key, evidence))
        case .countConnections(let key):
            guard let pool = configuration.pools.first(where: { $0.name == key.pool }) else { return }
            let count = await kernel.countConnections(
                toward: key.backend, transports: pool.protocols, namespaces: configuration.namespaces(of: pool))
            submit(.counted(key, connections: count, at: .now))
        case .reap(let key, let reason, let limit, let scope, let episode):
            guard let pool = configuration.pools.first(where: { $0.name == key.pool }) else {
                // A reload removed it: its reservation goes back all the same.
                submit(
                    .reaped(
                        .init(
                            pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: .now, granted: limit,
                            ran: false, episode: episode)))
                return
            }
            let request = KernelReapRequest(
                backend: key.backend, transports: pool.protocols, scope: scope, limit: limit, dryRun: configuration.dryRun,
                namespaces: configuration.namespaces(of: pool), refreshNamespaces: reason == .dead, zones: pool.conntrackZones)
            // A pass decided before the backend answered (or a reload removed it) is stale: dropped.
            guard state.stillRuns(key, reason: reason, episode: episode) else {
                submit(
                    .reaped(
                        .init(
                            pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: .now, scope: scope,
                            granted: limit, ran: false, episode: episode)))
                return
            }
            // Asked again before each namespace: one answer stops a pass over many where it is.
            let stopped = Mutex(false)
            let reports = await kernel.reap(request) { [state] in
                let runs = state.stillRuns(key, reason: reason, episode: episode)
                if !runs { stopped.withLock { $0 = true } }
                return runs
            }
            if stopped.withLock({ $0 }) {
                accounting.logger.info(
                    "pass stopped: the backend answered, or is no longer reaped",
                    metadata: [
                        "pool": "\(key.pool)", "backend": "\(key.backend)", "reason": "\(reason.rawValue)",
                        "namespaces_done": .stringConvertible(reports.count),
                    ])
            }
            let tally = accounting.reaped(reports, key: key, reason: reason, episode: episode, dryRun: configuration.dryRun)
            submit(
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: reason, ended: tally.ended,
                        leftByLimit: tally.leftByLimit, at: .now, scope: scope, granted: limit, flowsEnded: tally.flowsEnded,
                        episode: episode)))
        case .watchNewFlows(let key):
            guard let pool = configuration.pools.first(where: { $0.name == key.pool }) else { return }
            let announced = await kernel.watchNewFlows(
                key, transports: pool.protocols, zones: pool.conntrackZones, namespaces: configuration.namespaces(of: pool),
                announce: { [self] flow in submit(.newFlow(key, flow, at: .now)) },
                lost: { [self] stopped in
                    if stopped {
                        // Walks at the dead cadence from now on, until a watch is made again.
                        accounting.logger.warning(
                            "new-flow announcements stopped: walking instead",
                            metadata: ["pool": "\(key.pool)", "backend": "\(key.backend)"])
                        submit(.watching(key, announced: false))
                    }
                    submit(.announcementsLost(key, at: .now))
                })
            accounting.logger.info(
                "new flows toward the dead backend",
                metadata: [
                    "pool": "\(key.pool)", "backend": "\(key.backend)",
                    "announced_by_conntrack": "\(announced)",
                    "walk_every": "\(DurationParsing.format(announced ? ReapPolicy.announcedCadence : ReapPolicy.deadCadence))",
                ])
            submit(.watching(key, announced: announced))
        case .unwatchNewFlows(let key):
            await kernel.unwatchNewFlows(key)
        case .endFlow(let key, let flow, let reason, let episode):
            guard state.stillEnds(key, episode: episode) else {
                submit(
                    .reaped(
                        .init(
                            pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: .now, granted: 1,
                            ran: false,
                            episode: episode)))
                return
            }
            let reports = await kernel.endFlow(flow, dryRun: configuration.dryRun)
            let tally = accounting.reaped(reports, key: key, reason: reason, episode: episode, dryRun: configuration.dryRun)
            submit(
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: reason, ended: tally.ended,
                        leftByLimit: tally.leftByLimit, at: .now, granted: 1, flowsEnded: tally.flowsEnded, episode: episode)))
        case .scanStuck(let name, let limit):
            guard let pool = configuration.pools.first(where: { $0.name == name }), state.stillScans(pool: name) else {
                submit(
                    .reaped(.init(pool: name, backend: nil, reason: .stuck, ended: 0, leftByLimit: 0, at: .now, granted: limit, ran: false))
                )
                return
            }
            let reports = await kernel.scanStuck(
                pool, limit: limit, dryRun: configuration.dryRun, namespaces: configuration.namespaces(of: pool))
            if reports.contains(where: \.localFault) { submit(.stuckLocalFault(pool: name)) }
            let tally = accounting.stuck(reports, pool: name, dryRun: configuration.dryRun)
            submit(
                .reaped(
                    .init(
                        pool: name, backend: nil, reason: .stuck, ended: tally.ended, leftByLimit: tally.leftByLimit, at: .now,
                        granted: limit)))
        case .census(let name):
            guard let pool = configuration.pools.first(where: { $0.name == name }) else { return }
            let connections = await kernel.census(pool, namespaces: configuration.namespaces(of: pool))
            accounting.census(pool, connections)
            submit(.censused(pool: name, connections, at: .now))
        case .rebalance(let key, let connection):
            let reports = await kernel.endQuietConnection(connection, dryRun: configuration.dryRun)
            let tally = accounting.rebalanced(reports, key: key, connection: connection, dryRun: configuration.dryRun)
            submit(
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: .rebalance, ended: tally.ended, leftByLimit: 0, at: .now, granted: 1))
            )
        }
    }
}
