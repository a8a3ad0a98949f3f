import Agent
import Health
import NetworkAddress

/// Runs one world: the agent's real decision code (AgentState's ReapPolicy and EarlyDetection, the
/// executor's routing and its stale-action check) against a fake kernel, fake prober and balancer,
/// on a virtual clock in milliseconds, in one thread. Invariants are checked as ends happen and at
/// the horizon; the first broken one stops the run.
public final class Simulator {
    public struct Connection {
        var id: Int
        var backend: Int
        var streaming: Bool
        var opened: Int
        var wire: WireState
    }

    /// One connection ended, and why.
    public struct End: CustomStringConvertible {
        public var at: Int
        public var passStarted: Int
        /// When the policy granted the pass its budget.
        public var decided: Int
        public var backend: Int
        public var reason: ReapReason
        public var description: String {
            "\(at) ms: ended a connection to backend \(backend) (\(reason.rawValue), pass from \(passStarted) ms)"
        }
    }

    enum Job {
        case world(Happening)
        case probe(key: BackendKey, backend: Int, timeout: Int?, scheduled: Bool)
        case probed(BackendKey, ProbeResult)
        case tick
        case watch
        case action(ReapPolicy.Action, lane: String, decided: Int)
        case done(lane: String)
        case deliver(ReapPolicy.Event)
        case liveness(backend: Int, since: Int)
        /// The look at a backend's connections ends: taken then, as WorkerReapKernel.evidence takes it after the dumps.
        case evidence(BackendKey)
        case stuckLiveness(connection: Int, since: Int, again: Bool)
    }

    let world: World
    let state: AgentState
    /// The agent's own accounting of each pass, into a captured audit and a metrics registry.
    let audit = AuditCapture()
    let metrics = AgentMetrics()
    let accounting: ReapAccounting
    let t0 = ContinuousClock.now
    var now = 0
    var queue = JobQueue<Job>()
    var order = 0
    var random: SimRandom
    var conditions: [Condition]
    /// When each backend's data path last carried a segment (for the evidence and the invariants).
    var connections: [Connection] = []
    var nextConnection = 0
    var proberFaultUntil = -1
    var pathFault: (from: Int, until: Int, stagger: Int)?
    var unreadableUntil = -1
    /// Per pool and backend index: the latest probe result the policy was given.
    var latestProbe: [BackendKey: Bool] = [:]
    var lastDelivered: [Int: (at: Int, success: Bool)] = [:]
    var lastSuccessAt: [BackendKey: Int] = [:]
    /// Per backend: when its current condition began, and when it last left a silent one.
    var conditionSince: [Int]
    var silentUntil: [Int: Int] = [:]
    var lanes: [String: [(ReapPolicy.Action, Int)]] = [:]
    var busyLanes: Set<String> = []
    var tickAt: Int?
    var silenceWasLong: [Int: Bool] = [:]
    /// When each backend's current silence began (a death that turns into a pause is one silence).
    var silentSince: [Int: Int] = [:]
    var answeredSinceReturn: [Int: Bool] = [:]
    /// Per backend: when its path began or stopped carrying segments.
    var flowHistory: [Int: [(at: Int, flows: Bool)]] = [:]
    /// What each pool's last stuck scan carried to the next, as WorkerReapKernel keeps it.
    var stuckCarried: [String: StuckJudgement.Carried] = [:]
    public internal(set) var ends: [End] = []
    public internal(set) var trace: [String] = []
    public internal(set) var violation: String?

    public init(world: World) {
        self.world = world
        state = AgentState(configuration: world.configuration)
        accounting = ReapAccounting(state: state, metrics: metrics, logger: audit.logger())
        random = SimRandom(seed: world.seed ^ 0x5151)
        conditions = world.backends.map { _ in .alive }
        conditionSince = world.backends.map { _ in 0 }
        for (backend, count) in world.connections.enumerated() {
            for _ in 0..<count { open(toward: backend, streaming: random.chance(world.streamingShare)) }
        }
    }

    func instant(_ ms: Int) -> ContinuousClock.Instant { t0 + .milliseconds(ms) }
    func key(_ pool: Int, _ backend: Int) -> BackendKey {
        BackendKey(pool: world.configuration.pools[pool].name, backend: world.backends[backend])
    }
    func index(of endpoint: Endpoint) -> Int { world.backends.firstIndex(of: endpoint)! }

    func schedule(_ at: Int, _ job: Job) {
        order += 1
        queue.push(at: at, order: order, job)
    }

    func open(toward backend: Int, streaming: Bool) {
        connections.append(Connection(id: nextConnection, backend: backend, streaming: streaming, opened: now, wire: newWire(opened: now)))
        nextConnection += 1
    }

    /// Runs to the horizon or the first violation.
    private var tickedAt = -1
    private var ticksAtNow = 0
    static let ticksAtOneInstant = 1_000

    public func run() {
        for happening in world.happenings { schedule(happening.at, .world(happening)) }
        for (poolIndex, members) in world.poolMembers.enumerated() {
            let interval = Int(world.configuration.pools[poolIndex].interval.seconds * 1000)
            for backend in members {
                schedule(
                    random.int(in: 0..<interval), .probe(key: key(poolIndex, backend), backend: backend, timeout: nil, scheduled: true))
            }
        }
        if world.configuration.pools.contains(where: { $0.watchesRetransmissions && $0.backends.count > 1 }) { schedule(50, .watch) }
        while violation == nil {
            guard let item = queue.pop() else { break }
            guard item.at <= world.horizon else { break }
            now = item.at
            perform(item.job)
        }
        if violation == nil { checkMetricsAgainstAudit() }
    }

    func perform(_ job: Job) {
        switch job {
        case .world(let happening): happen(happening)
        case .probe(let key, let backend, let timeout, let scheduled): probe(key, backend, timeout: timeout, scheduled: scheduled)
        case .probed(let key, let result):
            let backend = index(of: key.backend)
            // A failure of a probe begun before the latest success is older news than it (the policy's rule too).
            let stale = !result.success && (lastSuccessAt[key].map { now - Int(result.duration.seconds * 1000) < $0 } ?? false)
            if !stale {
                latestProbe[key] = result.success
                if result.success { lastSuccessAt[key] = now }
                if result.failure != .local { lastDelivered[backend] = (now, result.success) }
            }
            if result.success { answeredSinceReturn[backend] = true }
            submit(.probed(key, result, at: instant(now)))
        case .tick:
            tickAt = nil
            // A deadline the millisecond clock wakes for just before it is due would be asked for again
            // at once, forever (seed 180,001,364: a retry set a fraction of a millisecond out).
            ticksAtNow = tickedAt == now ? ticksAtNow + 1 : 1
            tickedAt = now
            if ticksAtNow > Self.ticksAtOneInstant {
                fail("the agent asked to be woken at \(now) ms \(ticksAtNow) times and did nothing: its deadline never comes")
                return
            }
            submit(.tick(instant(now)))
        case .watch:
            observe()
            schedule(now + 50, .watch)
        case .action(let action, let lane, let decided): start(action, lane: lane, decided: decided)
        case .done(let lane):
            busyLanes.remove(lane)
            startNext(in: lane)
        case .deliver(let event): submit(event)
        case .evidence(let key): submit(.evidence(key, evidence(index(of: key.backend))))
        case .liveness(let backend, let since): checkLiveness(of: backend, deadSince: since)
        case .stuckLiveness(let connection, let since, let again): checkStuckLiveness(connection: connection, since: since, again: again)
        }
    }

    // MARK: - The world

    func happen(_ happening: Happening) {
        trace.append(happening.description)
        switch happening {
        case .becomes(_, let backend, let condition):
            if !conditions[backend].flows, condition.flows {
                silentUntil[backend] = now
                // Long as the policy can measure it: from the last segment before it (lines come 200 ms apart).
                let lastLife = lastSegment(backend) ?? silentSince[backend] ?? conditionSince[backend]
                silenceWasLong[backend] = conditions[backend] == .dead || now - lastLife >= floor(of: backend)
                answeredSinceReturn[backend] = false
            }
            // Liveness is owed for a death out of a settled life: a backend already judged dead (lossy and
            // idle, say) is reaped again by its full passes, every 10 s.
            if condition == .dead, conditions[backend] == .alive, now - conditionSince[backend] >= 10_000 {
                schedule(now + livenessBound(of: backend), .liveness(backend: backend, since: now))
            }
            if conditions[backend].flows, !condition.flows { silentSince[backend] = now }
            if conditions[backend].flows != condition.flows { flowHistory[backend, default: []].append((now, condition.flows)) }
            conditions[backend] = condition
            conditionSince[backend] = now
        case .proberFault(_, let lasting): proberFaultUntil = now + lasting
        case .probePathFault(_, let lasting, let stagger): pathFault = (now, now + lasting, stagger)
        case .unreadable(_, let lasting): unreadableUntil = now + lasting
        case .reload: state.apply(world.configuration)
        case .blackhole(_, let backend):
            let candidates = connections.indices.filter { connections[$0].backend == backend && connections[$0].wire.blackholedAt == nil }
            guard let index = candidates.first(where: { connections[$0].wire.writeEvery != nil }) ?? candidates.first else { return }
            connections[index].wire.blackholedAt = now
            if let every = connections[index].wire.writeEvery, let after = world.stuck.afterMilliseconds {
                schedule(
                    now + every + after + after / 2 + 1_500, .stuckLiveness(connection: connections[index].id, since: now, again: false))
            }
        case .localFault, .dataLoss: break
        }
    }

    /// What a probe sent now to the backend finds, and when it comes back.
    func probe(_ key: BackendKey, _ backend: Int, timeout: Int?, scheduled: Bool) {
        let pool = world.configuration.pools.first { $0.name == key.pool }!
        let limit = timeout ?? Int(pool.probe.timeout.seconds * 1000)
        if scheduled {
            let interval = Int(pool.interval.seconds * 1000)
            schedule(now + interval * random.int(in: 90...110) / 100, .probe(key: key, backend: backend, timeout: nil, scheduled: true))
        }
        func failed(_ failure: ProbeFailure, after ms: Int) -> ProbeResult {
            ProbeResult(failure: failure, duration: .milliseconds(ms), detail: failure.rawValue)
        }
        var result: ProbeResult
        if now < proberFaultUntil {
            result = failed(.local, after: 0)
        } else if let fault = pathFault, now >= fault.from + fault.stagger * backend, now < fault.until {
            result = failed(.unreachable, after: limit)
        } else {
            switch conditions[backend] {
            case .alive: result = .succeeded(after: .milliseconds(1), "connected")
            case .dead, .paused: result = failed(.unreachable, after: limit)
            case .draining: result = failed(.unhealthy, after: 2)
            case .overloaded: result = failed(.unhealthy, after: limit)
            case .lossy:
                result = random.chance(1.0 / 3) ? failed(.unreachable, after: limit) : .succeeded(after: .milliseconds(1), "connected")
            case .healthPortGone:
                result = pool.probe.port == nil ? .succeeded(after: .milliseconds(1), "connected") : failed(.refused, after: 1)
            }
        }
        // As HealthService does: a health port that finds nothing answering asks the service port.
        if pool.probe.port != nil, result.failure?.nothingAnswered == true {
            let pathBroken = pathFault.map { now >= $0.from + $0.stagger * backend && now < $0.until } ?? false
            let service: ProbeResult =
                now < proberFaultUntil
                ? failed(.local, after: 0)
                : (conditions[backend].flows && !pathBroken
                    ? .succeeded(after: .milliseconds(1), "connected") : failed(.unreachable, after: limit))
            result = result.withServicePort(service)
        }
        schedule(now + Int(result.duration.seconds * 1000), .probed(key, result))
    }

    /// The newest segment any connection toward the backend received, as a dump now would see it.
    func lastSegment(_ backend: Int) -> Int? {
        let streams = connections.filter { $0.backend == backend && $0.streaming }
        let idle = connections.filter { $0.backend == backend && !$0.streaming }
        var newest: Int?
        if !streams.isEmpty {
            // A line every 200 ms while the path flows; from the last flowing moment while it does not.
            let flowingUntil = conditions[backend].flows ? now : (silentSince[backend] ?? conditionSince[backend])
            let oldest = streams.map(\.opened).min()!
            if flowingUntil > oldest { newest = flowingUntil - (flowingUntil % 200) }
        }
        if let opened = idle.map(\.opened).max() { newest = max(newest ?? opened, opened) }
        return newest
    }

    func evidence(_ backend: Int) -> SegmentEvidence {
        if now < unreadableUntil {
            return SegmentEvidence(at: instant(now), sockets: 0, youngestSegmentAge: nil, complete: false)
        }
        let sockets = connections.filter { $0.backend == backend }.count
        return SegmentEvidence(
            at: instant(now), sockets: sockets, youngestSegmentAge: lastSegment(backend).map { .milliseconds(now - $0) })
    }

    /// The passive watch: streams toward a silent backend retransmit an RTO after it fell silent.
    func observe() {
        for pool in world.configuration.pools where pool.watchesRetransmissions && pool.backends.count > 1 {
            var count = RetransmissionCount()
            for endpoint in pool.backends {
                let backend = index(of: endpoint)
                let streams = connections.filter { $0.backend == backend && $0.streaming }
                count.connections[endpoint] = streams.count
                if !conditions[backend].flows, now - conditionSince[backend] >= 200 { count.retransmitting[endpoint] = streams.count }
            }
            let observation = EarlyDetection.Observation(
                pool: pool.name, connections: count.connections, retransmitting: count.retransmitting, at: instant(now))
            performEarly(state.early(.observed(observation)))
        }
    }

    // MARK: - The executor, as ReapExecutor does it

    func submit(_ event: ReapPolicy.Event) {
        let decided = state.handle(event)
        for action in decided {
            switch action {
            case .changed(let key, let from, let to, _, _): trace.append("\(now) ms: \(key) \(from.rawValue) -> \(to.rawValue)")
            case .suppressed(let pool, let backend, let reason, let log):
                if log { trace.append("\(now) ms: \(pool)/\(backend.map { "\($0)" } ?? "-") held: \(reason.rawValue)") }
            case .guardReleased, .rebalanceNews: break
            default:
                if case .reap(let key, let reason, let limit, let scope, _) = action {
                    trace.append("\(now) ms: \(key) \(reason.rawValue) pass decided, \(scope.rawValue), limit \(limit)")
                }
                enqueue(action)
            }
        }
        for early in ReapExecutor.earlyEvents(after: event, decided: decided, at: instant(now)) { performEarly(state.early(early)) }
        setAlarm()
    }

    func performEarly(_ actions: [EarlyDetection.Action]) {
        for action in actions {
            switch action {
            case .probe(let key, let timeout, _), .probeForReturn(let key, let timeout):
                schedule(now, .probe(key: key, backend: index(of: key.backend), timeout: Int(timeout.seconds * 1000), scheduled: false))
            default: break
            }
        }
        setAlarm()
    }

    func setAlarm() {
        guard let due = state.nextDeadline else { return }
        let at = max(now, Int(((due - t0).seconds * 1000).rounded(.up)))
        if let tickAt, tickAt <= at { return }
        tickAt = at
        schedule(at, .tick)
    }

    func enqueue(_ action: ReapPolicy.Action) {
        if case .probeNow(let pool, let backends) = action {
            for endpoint in backends {
                schedule(
                    now,
                    .probe(key: BackendKey(pool: pool, backend: endpoint), backend: index(of: endpoint), timeout: nil, scheduled: false))
            }
            return
        }
        let lane: String
        switch action {
        case .scanStuck(let pool, _), .census(let pool): lane = pool
        case .needEvidence(let key, _), .reap(let key, _, _, _, _), .countConnections(let key), .watchNewFlows(let key),
            .unwatchNewFlows(let key), .endFlow(let key, _, _, _), .rebalance(let key, _):
            lane = key.description
        default: return
        }
        lanes[lane, default: []].append((action, now))
        startNext(in: lane)
    }

    func startNext(in lane: String) {
        guard !busyLanes.contains(lane), var waiting = lanes[lane], !waiting.isEmpty else { return }
        let (action, decided) = waiting.removeFirst()
        lanes[lane] = waiting
        busyLanes.insert(lane)
        schedule(now, .action(action, lane: lane, decided: decided))
    }

    /// Carries one action out; a pass takes 1 to 30 ms, now and then 400 (a large table).
    func start(_ action: ReapPolicy.Action, lane: String, decided: Int) {
        let takes = random.chance(0.05) ? 400 : random.int(in: 1...30)
        let finish = now + takes
        switch action {
        case .needEvidence(let key, _):
            schedule(finish, .done(lane: lane))
            schedule(finish, .evidence(key))
        case .countConnections(let key):
            let count = connections.filter { $0.backend == index(of: key.backend) }.count
            schedule(finish, .done(lane: lane))
            deliver(at: finish, .counted(key, connections: count, at: instant(finish)))
        case .reap(let key, let reason, let limit, let scope, let episode):
            guard state.stillRuns(key, reason: reason, episode: episode) else {
                schedule(now, .done(lane: lane))
                submit(
                    .reaped(
                        .init(
                            pool: key.pool, backend: key.backend, reason: reason, ended: 0, leftByLimit: 0, at: instant(now), scope: scope,
                            granted: limit, ran: false, episode: episode)))
                return
            }
            let backend = index(of: key.backend)
            let matching = scope == .newConnects ? [] : connections.filter { $0.backend == backend }
            let ended = Array(matching.prefix(limit))
            for connection in ended { end(connection, reason: reason, passStarted: now, decided: decided, key: key) }
            account(ended, key: key, pool: key.pool, reason: reason)
            schedule(finish, .done(lane: lane))
            deliver(
                at: finish,
                .reaped(
                    .init(
                        pool: key.pool, backend: key.backend, reason: reason, ended: ended.count, leftByLimit: matching.count - ended.count,
                        at: instant(finish), scope: scope, granted: limit, episode: episode)))
        case .watchNewFlows(let key):
            schedule(finish, .done(lane: lane))
            deliver(at: finish, .watching(key, announced: false))
        case .scanStuck(let pool, let limit):
            guard state.stillScans(pool: pool) else {
                schedule(now, .done(lane: lane))
                submit(
                    .reaped(
                        .init(
                            pool: pool, backend: nil, reason: .stuck, ended: 0, leftByLimit: 0, at: instant(now), granted: limit, ran: false
                        )))
                return
            }
            let scan = scanStuck(pool, limit: limit)
            for connection in scan.ended {
                end(
                    connection, reason: .stuck, passStarted: now, decided: decided,
                    key: BackendKey(pool: pool, backend: world.backends[connection.backend]))
            }
            account(scan.ended, key: nil, pool: pool, reason: .stuck)
            schedule(finish, .done(lane: lane))
            if scan.localFault { deliver(at: finish, .stuckLocalFault(pool: pool)) }
            deliver(
                at: finish,
                .reaped(
                    .init(
                        pool: pool, backend: nil, reason: .stuck, ended: scan.ended.count, leftByLimit: scan.left, at: instant(finish),
                        granted: limit)))
        default:
            schedule(now, .done(lane: lane))
        }
    }

    func deliver(at: Int, _ event: ReapPolicy.Event) { schedule(at, .deliver(event)) }

    // MARK: - Ends and the balancer's reconnects

    func end(_ connection: Connection, reason: ReapReason, passStarted: Int, decided: Int, key: BackendKey) {
        let record = End(at: passStarted, passStarted: passStarted, decided: decided, backend: connection.backend, reason: reason)
        check(record, connection: connection, key: key)
        connections.removeAll { $0.id == connection.id }
        ends.append(record)
        trace.append(record.description)
        // The balancer reconnects to a backend whose path flows, if any (least connections).
        let flowing = world.poolMembers.flatMap { $0 }.filter { conditions[$0].flows }
        if let target = flowing.min(by: { a, b in
            connections.filter { $0.backend == a }.count < connections.filter { $0.backend == b }.count
        }) {
            open(toward: target, streaming: connection.streaming)
        }
    }
}

/// A binary heap of jobs by time, then by the order they were scheduled in (so a seed replays
/// exactly). The heap moves small keys; the jobs, large enums, stay where they were put.
struct JobQueue<Job> {
    private var keys: [(at: Int, order: Int, slot: Int)] = []
    private var jobs: [Job?] = []
    private var free: [Int] = []

    private func before(_ a: Int, _ b: Int) -> Bool { (keys[a].at, keys[a].order) < (keys[b].at, keys[b].order) }

    mutating func push(at: Int, order: Int, _ job: Job) {
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            jobs[slot] = job
        } else {
            slot = jobs.count
            jobs.append(job)
        }
        keys.append((at, order, slot))
        var child = keys.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard before(child, parent) else { break }
            keys.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> (at: Int, order: Int, job: Job)? {
        guard !keys.isEmpty else { return nil }
        keys.swapAt(0, keys.count - 1)
        let first = keys.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < keys.count, before(left, smallest) { smallest = left }
            if right < keys.count, before(right, smallest) { smallest = right }
            guard smallest != parent else { break }
            keys.swapAt(parent, smallest)
            parent = smallest
        }
        let job = jobs[first.slot].take()!
        free.append(first.slot)
        return (first.at, first.order, job)
    }
}
