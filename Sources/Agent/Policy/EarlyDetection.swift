import NetworkAddress

/// Probes a backend at once when the kernel shows it dying, instead of waiting out `interval x fall`.
/// A pure state machine beside `ReapPolicy`: observations and probe results in, probes out. It never
/// ends a connection and never decides a state: its probes go to the policy like any other, so a
/// backend is `dead` by the same rule as always (failed probes, nothing answering, no sign of life
/// on its own connections), only sooner.
///
/// The signal: sockets toward one backend retransmit (data unacknowledged past an RTO, the
/// retransmit timer running) while the sockets toward the pool's other backends do not. When every
/// backend's sockets retransmit, the fault is nearer to us (our link, our NIC): no signal. A pool
/// with one backend has nothing to compare with: no signal either.
public struct EarlyDetection: Sendable {
    public typealias Instant = ContinuousClock.Instant

    public enum Signal: String, Sendable, CaseIterable {
        /// Its connections retransmit while the pool's others are acknowledged.
        case retransmits
        /// Its address's neighbour (ARP/NDP) entry failed: nothing on the link answers for it.
        case neighbour
        /// The only interface toward it lost its carrier.
        case carrier
        /// The agent's own idle connection to it went unacknowledged past its keepalive probe.
        case heartbeat
    }

    /// One look at a pool's established connections.
    public struct Observation: Sendable, Equatable {
        public var pool: String
        /// Per backend: its connections, and how many of them are retransmitting.
        public var connections: [Endpoint: Int]
        public var retransmitting: [Endpoint: Int]
        public var at: Instant

        public init(pool: String, connections: [Endpoint: Int], retransmitting: [Endpoint: Int], at: Instant) {
            self.pool = pool
            self.connections = connections
            self.retransmitting = retransmitting
            self.at = at
        }
    }

    public enum Event: Sendable {
        case observed(Observation)
        /// A signal about one backend alone (its neighbour entry, its interface's carrier).
        case signal(BackendKey, Signal, detail: String, at: Instant)
        case probed(BackendKey, success: Bool, at: Instant)
        case state(BackendKey, BackendState, at: Instant)
        case tick(Instant)
    }

    public enum Verdict: String, Sendable {
        /// The policy found it dead.
        case dead
        /// A probe succeeded: it lives (a loss burst, a slow peer).
        case falseAlarm = "false_alarm"
        /// The early probes ran out without a verdict (it answers, but not well): the schedule goes on.
        case undecided
    }

    public enum Action: Sendable, Equatable {
        /// Probe the backend now with this timeout; the result goes to the policy and back here.
        case probe(BackendKey, timeout: Duration, signal: Signal)
        /// A signal made the backend a suspect (logged, counted).
        case suspected(BackendKey, Signal, detail: String)
        case cleared(BackendKey, Signal, verdict: Verdict, after: Duration)
        /// A backend found dead early answered a probe again this long after its signal: the policy
        /// holds its reaps from here, and the signal is ignored for `quietAfterFalseAlarm`.
        case answeredAgain(BackendKey, Signal, after: Duration)
        /// Probe a backend found dead early, to see it answer again (counted apart from early probes).
        case probeForReturn(BackendKey, timeout: Duration)
    }

    /// The knobs of one pool the rules read.
    public struct PoolRules: Sendable, Equatable {
        public var name: String
        public var backends: [Endpoint]
        public var fall: Int
        public var probeTimeout: Duration

        public init(name: String, backends: [Endpoint], fall: Int, probeTimeout: Duration) {
            self.name = name
            self.backends = backends
            self.fall = fall
            self.probeTimeout = probeTimeout
        }

        public init(_ pool: PoolConfiguration) {
            self.init(name: pool.name, backends: pool.backends, fall: pool.fall, probeTimeout: pool.probe.timeout)
        }

        /// An early probe's timeout: the pool's, but at most `earlyTimeoutCap`. A live backend's
        /// kernel answers a SYN within a round trip, and the signal already says its connections went
        /// unacknowledged for an RTO, so waiting a whole configured timeout only delays the verdict.
        var earlyTimeout: Duration { min(probeTimeout, EarlyDetection.earlyTimeoutCap) }
    }

    public static let earlyTimeoutCap: Duration = .milliseconds(200)
    /// Early probes start this far apart (not one after another's end): `fall` of them decide in
    /// about one early timeout.
    public static let earlySpacing: Duration = .milliseconds(10)
    /// How long after its last early probe's timeout a suspect waits for the policy's verdict (the
    /// evidence dump and the state change come after the probe results).
    public static let verdictGrace: Duration = .seconds(1)
    /// After a false alarm the signal that raised it is ignored this long for that backend: a lossy
    /// path must not turn into a probe storm.
    public static let quietAfterFalseAlarm: Duration = .seconds(10)
    /// After an early dead verdict the backend is probed at once, then this often for `returnWatchLength`. An
    /// outage just long enough to look like a death (0.6-1 s) must not cost the connections a
    /// balancer makes once it is back: the regular probes of a dead backend would notice that only
    /// after an interval or more, and every new connection until then would be reaped as still dead.
    /// 100 ms: the first probe, at the verdict, may still fall into the outage, and a balancer
    /// reconnects about once a millisecond meanwhile (each one aborted until the backend is seen).
    public static let returnProbeEvery: Duration = .milliseconds(100)
    public static let returnWatchLength: Duration = .seconds(5)

    struct Suspicion: Sendable {
        var signal: Signal
        var since: Instant
        /// When each early probe still to send is due.
        var due: [Instant]
        /// When the last early probe's result is expected at the latest.
        var decideBy: Instant
    }

    struct ReturnWatch: Sendable {
        var signal: Signal
        var since: Instant
        var due: Instant
        var until: Instant
    }

    public private(set) var pools: [PoolRules] = []
    private var returnWatches: [BackendKey: ReturnWatch] = [:]
    private var states: [BackendKey: BackendState] = [:]
    private var suspects: [BackendKey: Suspicion] = [:]
    /// Per backend, the signals a false alarm quieted, and until when. Only the signal that was
    /// wrong goes quiet: a heartbeat that missed one keepalive on a lossy path says nothing of the
    /// retransmissions, neighbour or carrier news that would show the same backend dying after it.
    private var quietUntil: [BackendKey: [Signal: Instant]] = [:]
    /// How each backend's last death was detected, for its reap's audit line.
    public private(set) var detections: [BackendKey: (signal: Signal, since: Instant)] = [:]

    public init(pools: [PoolRules] = []) {
        self.pools = pools
    }

    public mutating func apply(_ pools: [PoolRules]) {
        self.pools = pools
        let keys = Set(pools.flatMap { pool in pool.backends.map { BackendKey(pool: pool.name, backend: $0) } })
        states = states.filter { keys.contains($0.key) }
        suspects = suspects.filter { keys.contains($0.key) }
        quietUntil = quietUntil.filter { keys.contains($0.key) }
        returnWatches = returnWatches.filter { keys.contains($0.key) }
        detections = detections.filter { keys.contains($0.key) }
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .observed(let observation): return observed(observation)
        case .signal(let key, let signal, let detail, let at):
            guard let pool = pools.first(where: { $0.name == key.pool }), pool.backends.contains(key.backend) else { return [] }
            return suspect(key, signal, pool: pool, detail: detail, at: at)
        case .probed(let key, let success, let at): return probed(key, success: success, at: at)
        case .state(let key, let state, let at): return changed(key, to: state, at: at)
        case .tick(let now): return tick(now)
        }
    }

    public var nextDeadline: Instant? {
        (suspects.values.map { $0.due.first ?? $0.decideBy } + returnWatches.values.map(\.due)).min()
    }

    private mutating func observed(_ observation: Observation) -> [Action] {
        guard let pool = pools.first(where: { $0.name == observation.pool }) else { return [] }
        var actions: [Action] = []
        for backend in pool.backends {
            let retransmitting = observation.retransmitting[backend] ?? 0
            guard retransmitting > 0 else { continue }
            let others = pool.backends.filter { $0 != backend && (observation.connections[$0] ?? 0) > 0 }
            // The others must have connections to compare with, and none of them may retransmit.
            guard !others.isEmpty, others.allSatisfy({ (observation.retransmitting[$0] ?? 0) == 0 }) else { continue }
            let key = BackendKey(pool: pool.name, backend: backend)
            let detail =
                "\(retransmitting) of \(observation.connections[backend] ?? retransmitting) connections retransmitting, "
                + "none of \(others.reduce(0) { $0 + (observation.connections[$1] ?? 0) }) to \(others.count) others"
            actions += suspect(key, .retransmits, pool: pool, detail: detail, at: observation.at)
        }
        return actions
    }

    private mutating func suspect(_ key: BackendKey, _ signal: Signal, pool: PoolRules, detail: String, at now: Instant) -> [Action] {
        // Only a backend believed up: an unhealthy one is probed anyway, a dead one is being reaped.
        guard states[key] == .up, suspects[key] == nil, quietUntil[key]?[signal].map({ now >= $0 }) ?? true else { return [] }
        // `fall` probes at once, and one more when a probe interval's worth of silence (the most the
        // policy asks before it believes a death) has passed, in case the first verdict came too soon.
        let due = (0..<pool.fall).map { now + Self.earlySpacing * $0 } + [now + SegmentEvidence.recentEnoughCap + Self.earlySpacing * 5]
        suspects[key] = Suspicion(
            signal: signal, since: now, due: due, decideBy: due.last! + pool.earlyTimeout + Self.verdictGrace)
        return [.suspected(key, signal, detail: detail)] + tick(now)
    }

    private mutating func probed(_ key: BackendKey, success: Bool, at now: Instant) -> [Action] {
        guard success else { return [] }
        if let watch = returnWatches.removeValue(forKey: key) {
            quietUntil[key, default: [:]][watch.signal] = now + Self.quietAfterFalseAlarm
            return [.answeredAgain(key, watch.signal, after: now - watch.since)]
        }
        guard let suspicion = suspects[key] else { return [] }
        suspects[key] = nil
        quietUntil[key, default: [:]][suspicion.signal] = now + Self.quietAfterFalseAlarm
        return [.cleared(key, suspicion.signal, verdict: .falseAlarm, after: now - suspicion.since)]
    }

    private mutating func changed(_ key: BackendKey, to state: BackendState, at now: Instant) -> [Action] {
        states[key] = state
        if state != .dead { returnWatches[key] = nil }
        guard let suspicion = suspects[key] else {
            if state == .up { detections[key] = nil }
            return []
        }
        switch state {
        case .dead:
            suspects[key] = nil
            detections[key] = (suspicion.signal, suspicion.since)
            // The first at once: the verdict can come after a short outage already ended, and a
            // balancer's reconnects would be reaped until the backend is seen answering.
            returnWatches[key] = ReturnWatch(
                signal: suspicion.signal, since: suspicion.since, due: now + Self.returnProbeEvery, until: now + Self.returnWatchLength)
            return [
                .cleared(key, suspicion.signal, verdict: .dead, after: now - suspicion.since),
                .probeForReturn(key, timeout: pools.first { $0.name == key.pool }.map(\.earlyTimeout) ?? Self.earlyTimeoutCap),
            ]
        case .up:
            suspects[key] = nil
            return [.cleared(key, suspicion.signal, verdict: .falseAlarm, after: now - suspicion.since)]
        case .unhealthy, .unknown:
            return []
        }
    }

    private mutating func tick(_ now: Instant) -> [Action] {
        var actions: [Action] = []
        for (key, var suspicion) in suspects.sorted(by: { $0.key.description < $1.key.description }) {
            guard let pool = pools.first(where: { $0.name == key.pool }) else { continue }
            while let first = suspicion.due.first, first <= now {
                suspicion.due.removeFirst()
                actions.append(.probe(key, timeout: pool.earlyTimeout, signal: suspicion.signal))
            }
            if suspicion.due.isEmpty, now >= suspicion.decideBy {
                suspects[key] = nil
                actions.append(.cleared(key, suspicion.signal, verdict: .undecided, after: now - suspicion.since))
            } else {
                suspects[key] = suspicion
            }
        }
        for (key, var watch) in returnWatches.sorted(by: { $0.key.description < $1.key.description }) where watch.due <= now {
            guard now < watch.until, let pool = pools.first(where: { $0.name == key.pool }) else {
                returnWatches[key] = nil
                continue
            }
            actions.append(.probeForReturn(key, timeout: pool.earlyTimeout))
            watch.due = watch.due + Self.returnProbeEvery > now ? watch.due + Self.returnProbeEvery : now + Self.returnProbeEvery
            returnWatches[key] = watch
        }
        return actions
    }
}
