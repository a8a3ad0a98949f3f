import Agent
import NetworkAddress

/// The rules every run must keep, checked as each connection is ended and at each liveness deadline.
extension Simulator {
    /// The silence a dead verdict needs in the pools holding the backend (the shortest of them).
    func floor(of backend: Int) -> Int {
        world.configuration.pools.filter { $0.backends.contains(world.backends[backend]) }
            .map { Int($0.outageFloor.seconds * 1000) }.min() ?? 0
    }

    func fail(_ message: String) {
        guard violation == nil else { return }
        violation = "\(now) ms: \(message)"
        trace.append("VIOLATION \(violation!)")
    }

    func check(_ end: End, connection: Connection, key: BackendKey) {
        let backend = end.backend
        let start = end.passStarted
        if end.reason == .stuck, let pool = world.configuration.pools.first(where: { $0.name == key.pool }) {
            // A stuck connection's own backend answering is the point (incident 3): its guard is that
            // some backend of the scanning pool answers, and the rest is the stuck rule's ground truth.
            checkStuck(connection, pool: pool)
            checkBudget(end)
            return
        }
        // 1. The guard, on every path: each pool holding the backend has another that answers now.
        for pool in world.configuration.pools where pool.backends.contains(world.backends[backend]) {
            let answering = pool.backends.contains { other in
                other != world.backends[backend] && latestProbe[BackendKey(pool: pool.name, backend: other)] == true
            }
            if !answering {
                fail("ended a connection to backend \(backend) (\(end.reason.rawValue)) while no other backend of \(pool.name) answers")
            }
        }
        // 2. Recovery wins: after it answered, no pass that starts ends anything (drains aside: those belong to unhealthy).
        if end.reason != .drainTimeout, let last = lastDelivered[backend], last.success, last.at <= start {
            fail("ended a connection to backend \(backend) (\(end.reason.rawValue)) after it answered at \(last.at) ms")
        }
        // 3. The living keep their streams: a stream that flows is ended only by a drain, or right
        //    after a long silence before anyone has seen the backend answer again.
        if end.reason != .drainTimeout, connection.streaming, start - connection.opened >= 300 {
            if conditions[backend].flows {
                let returning = (silenceWasLong[backend] ?? false) && !(answeredSinceReturn[backend] ?? true)
                if !returning {
                    fail("ended a flowing stream to backend \(backend) (\(conditions[backend].rawValue), \(end.reason.rawValue))")
                }
            } else if conditions[backend] == .paused, now - lastLine(of: backend, openedAt: connection.opened) < floor(of: backend) - 250 {
                let silent = now - lastLine(of: backend, openedAt: connection.opened)
                fail("ended a stream to backend \(backend) \(silent) ms into a pause (floor \(floor(of: backend)) ms)")
            }
        }
        checkBudget(end)
    }

    /// 4. The budget is a cap across every path together, burst included: counted when granted
    ///    (a pass that waits in its backend's lane behind a slow dump ends its share later).
    func checkBudget(_ end: End) {
        let configuration = world.configuration
        let recent = ends.filter { end.decided - $0.decided <= 10_000 && $0.decided <= end.decided }
        for since in Set(recent.map(\.decided)) {
            let window = end.decided - since
            let count = recent.filter { $0.decided >= since }.count + 1
            let allowed = Double(configuration.maxSocketsBurst) + Double(configuration.maxSocketsPerSecond) * Double(window) / 1000 + 1
            if Double(count) > allowed {
                let detail = recent.filter { $0.decided >= since }.map { "\($0.backend)@\($0.decided)/\($0.passStarted)" }
                fail("\(count) granted within \(window) ms: more than the budget allows (\(Int(allowed))): \(detail)")
                break
            }
        }
    }

    /// When the stream last carried a line (every 200 ms while its backend's path flows): a pause that
    /// follows a flowing moment too short for a line is one silence with the one before (seed
    /// 70,037,836: 945 ms paused, 13 ms flowing, paused again).
    func lastLine(of backend: Int, openedAt opened: Int) -> Int {
        var until = now
        var flows = conditions[backend].flows
        for change in (flowHistory[backend] ?? []).reversed() where change.at <= now {
            if flows {
                let line = (until - 1) - (until - 1) % 200
                if line >= max(change.at, opened) { return line }
            }
            until = change.at
            flows = !change.flows
        }
        if flows {
            let line = (until - 1) - (until - 1) % 200
            if line >= opened { return line }
        }
        return opened
    }

    /// How long a silent death may take to end every connection it had: probing, the floor, a slow
    /// pass, and what the budget paces. Paced, it takes a full pass per bucket at least a cadence
    /// apart, each after a look at the connections (two lane jobs: up to 30 ms each, a few 400 ms).
    func livenessBound(of backend: Int) -> Int {
        let pools = world.configuration.pools.filter { $0.backends.contains(world.backends[backend]) }
        let probing = pools.map { Int(($0.interval * ($0.fall + 1) + $0.probe.timeout).seconds * 1000) }.max() ?? 0
        let minOutage = pools.map { Int($0.minOutage.seconds * 1000) }.max() ?? 0
        let total = connections.count + 30
        let burst = max(1, world.configuration.maxSocketsBurst)
        let cadence = Int(ReapPolicy.deadCadence.seconds * 1000)
        let passes = (total + burst - 1) / burst
        let paced = total > burst ? max(1000 * total / max(1, world.configuration.maxSocketsPerSecond), passes * (cadence + 60) + 800) : 0
        return probing + minOutage + 1_000 + paced
    }

    /// Liveness: every connection a silent death left behind is ended within the bound, where the
    /// rules let it be (a survivor throughout in every pool holding it, no fault of the prober's own).
    func checkLiveness(of backend: Int, deadSince: Int) {
        guard conditions[backend] == .dead, conditionSince[backend] == deadSince else { return }
        let quiet = world.happenings.allSatisfy { happening in
            switch happening {
            case .becomes(let at, let other, _): return other == backend || at < deadSince - 10_000 || at > now
            case .proberFault(let at, let lasting), .probePathFault(let at, let lasting, _), .unreadable(let at, let lasting),
                .localFault(let at, let lasting), .dataLoss(let at, _, let lasting):
                return at + lasting < deadSince - 10_000 || at > now
            case .reload, .blackhole: return true
            }
        }
        guard quiet else { return }
        for pool in world.configuration.pools where pool.backends.contains(world.backends[backend]) {
            let survivor = pool.backends.contains { $0 != world.backends[backend] && conditions[index(of: $0)] == .alive }
            guard survivor else { return }
        }
        let left = connections.filter { $0.backend == backend && $0.opened < deadSince }
        if !left.isEmpty { fail("\(left.count) connections to backend \(backend), dead since \(deadSince) ms, still open") }
    }
}
